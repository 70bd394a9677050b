//! What operators do to codes, shared by the admin routes and the CLI:
//! create (any kind, validated per kind), change (limit, window, status,
//! rules) keeping Redis and Postgres in step, and bulk-generate single-use
//! codes. Every write goes to Postgres first, then to the gate.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::Rng;
use serde::Deserialize;
use utoipa::ToSchema;

use super::model::{Code, CodeKind, CodeName, CodeStatus, TimestampSchema, VoucherReward};
use super::store::{self, ChangeOutcome, CodeChange};
use crate::coupons::{CouponReward, Rules};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::redemption::gate::Controls;
use crate::redemption::Gate;

/// Largest limit a code may have: its free-ticket list is rebuilt in memory.
pub const MAX_LIMIT: i64 = 10_000_000;
/// Largest credit per redemption (a trillion Toman), far from i64 overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Most codes one bulk request generates.
pub const MAX_BULK: i64 = 100_000;

/// What the server parses for `POST /admin/codes` (the spec shows it per
/// kind: `codes::contract`, tested against [`validate_create`]).
#[derive(Debug, Clone, Deserialize)]
pub struct CreateCode {
    pub code: String,
    /// credit (default), voucher or coupon.
    #[serde(default)]
    pub kind: Option<CodeKind>,
    /// Credit codes only: credit per redemption, integer Toman, 1 to 10^12.
    pub amount: Option<i64>,
    /// How many uses in all, 1 to 10,000,000.
    pub limit: i64,
    /// Coupons only: uses per user, 1-1000 (default 1).
    pub per_user_limit: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// IANA name, e.g. Asia/Tehran (the default); day rules are judged in it.
    pub time_zone: Option<String>,
    /// Vouchers and coupons only (required for them), by `kind`: a
    /// `VoucherReward` for `voucher`, a `CouponReward` for `coupon`.
    pub reward: Option<serde_json::Value>,
    /// Coupons only: eligibility rules (all must hold).
    pub rules: Option<serde_json::Value>,
    /// Count its redemptions under its own name in the metrics (default false:
    /// they share the label `untracked`). Mark only codes whose name may be
    /// seen by whoever reads the metrics, and few of them: one series each.
    pub tracked: Option<bool>,
}

impl CreateCode {
    /// A credit code, as the CLI creates it.
    pub fn credit(code: String, amount: i64, limit: i64) -> Self {
        CreateCode {
            code,
            kind: Some(CodeKind::Credit),
            amount: Some(amount),
            limit,
            per_user_limit: None,
            starts_at: None,
            ends_at: None,
            time_zone: None,
            reward: None,
            rules: None,
            tracked: None,
        }
    }
}

/// A create request that has passed every rule of its kind.
struct ValidCode {
    kind: CodeKind,
    amount: i64,
    limit: i32,
    per_user_limit: i32,
    time_zone: String,
    reward: serde_json::Value,
    rules: serde_json::Value,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidInput(msg.into())
}

fn check_limit(limit: i64) -> Result<i32, ApiError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit as i32)
    } else {
        Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")))
    }
}

fn check_window(starts: Option<DateTime<Utc>>, ends: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    match (starts, ends) {
        (Some(s), Some(e)) if s >= e => Err(invalid("starts_at must be before ends_at")),
        _ => Ok(()),
    }
}

pub fn check_rules(rules: &serde_json::Value) -> Result<serde_json::Value, ApiError> {
    let parsed: Rules = serde_json::from_value(rules.clone()).map_err(|e| invalid(format!("rules: {e}")))?;
    parsed.validate().map_err(|e| invalid(format!("rules: {e}")))?;
    serde_json::to_value(parsed).map_err(ApiError::internal)
}

fn validate(input: &CreateCode, default_tz: &str) -> Result<ValidCode, ApiError> {
    let kind = input.kind.unwrap_or(CodeKind::Credit);
    let limit = check_limit(input.limit)?;
    check_window(input.starts_at, input.ends_at)?;
    let time_zone = input.time_zone.clone().unwrap_or_else(|| default_tz.to_string());
    time_zone.parse::<chrono_tz::Tz>().map_err(|_| invalid(format!("unknown time zone {time_zone:?}")))?;
    let per_user_limit = input.per_user_limit.unwrap_or(1);
    if kind != CodeKind::Coupon && per_user_limit != 1 {
        return Err(invalid("per_user_limit applies to coupons only"));
    }
    if !(1..=1000).contains(&per_user_limit) {
        return Err(invalid("per_user_limit must be between 1 and 1000"));
    }
    if kind != CodeKind::Coupon && input.rules.is_some() {
        return Err(invalid("rules apply to coupons only"));
    }
    let (amount, reward) = match kind {
        CodeKind::Credit => {
            let amount = input.amount.ok_or_else(|| invalid("a credit code needs an amount"))?;
            if !(1..=MAX_AMOUNT).contains(&amount) {
                return Err(invalid(format!("amount must be between 1 and {MAX_AMOUNT}")));
            }
            if input.reward.is_some() {
                return Err(invalid("a credit code's reward is its amount"));
            }
            (amount, serde_json::json!({}))
        }
        CodeKind::Voucher | CodeKind::Coupon if input.amount.is_some() => {
            return Err(invalid("amount applies to credit codes only; use reward"));
        }
        CodeKind::Voucher => {
            let raw = input.reward.clone().ok_or_else(|| invalid("a voucher campaign needs a reward"))?;
            let reward: VoucherReward = serde_json::from_value(raw).map_err(|e| invalid(format!("reward: {e}")))?;
            reward.validate().map_err(|e| invalid(format!("reward: {e}")))?;
            (0, serde_json::to_value(reward).map_err(ApiError::internal)?)
        }
        CodeKind::Coupon => {
            let raw = input.reward.clone().ok_or_else(|| invalid("a coupon needs a reward"))?;
            let reward: CouponReward = serde_json::from_value(raw).map_err(|e| invalid(format!("reward: {e}")))?;
            reward.validate().map_err(|e| invalid(format!("reward: {e}")))?;
            (0, serde_json::to_value(reward).map_err(ApiError::internal)?)
        }
    };
    let rules = match &input.rules {
        Some(r) => check_rules(r)?,
        None => serde_json::json!({}),
    };
    Ok(ValidCode { kind, amount, limit, per_user_limit: per_user_limit as i32, time_zone, reward, rules })
}

/// Validates, writes Postgres, then installs the code's gate state in Redis.
pub async fn create_code(pg: &Pool, gate: &Gate, input: CreateCode, default_tz: &str) -> Result<Code, ApiError> {
    let name = CodeName::parse(&input.code)?;
    let valid = validate(&input, default_tz)?;
    let db = pg.get().await.map_err(StoreError::from)?;
    let new = store::NewCode {
        code: &name,
        kind: valid.kind,
        amount: valid.amount,
        limit: valid.limit,
        per_user_limit: valid.per_user_limit,
        starts_at: input.starts_at,
        ends_at: input.ends_at,
        time_zone: &valid.time_zone,
        reward: &valid.reward,
        rules: &valid.rules,
        batch: None,
        tracked: input.tracked.unwrap_or(false),
    };
    let code = store::insert_code(&db, &new).await?.ok_or(ApiError::CodeExists)?;
    // A brand-new code has no redemptions: its gate state replaces any leftover.
    // If Redis is down now, the reconciler installs it later (the code answers
    // 503 until then), so the code exists either way.
    if let Err(e) = gate.install(&code.code, code.limit, 0, 0, &[], &[], true, &Controls::of(&code)).await {
        tracing::warn!(code = %code.code, error = %e, "code created; its gate state is left to the reconciler");
    }
    tracing::info!(code = %code.code, kind = code.kind.as_str(), limit = code.limit, "code created");
    Ok(code)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ChangeCode {
    /// New limit, 1 to 10,000,000: up at will; down never to or below a ticket in use.
    #[schema(minimum = 1, maximum = 10000000)]
    pub limit: Option<i64>,
    /// Coupons only: 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub per_user_limit: Option<i64>,
    /// null clears the bound; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<TimestampSchema>)]
    pub starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<TimestampSchema>)]
    pub ends_at: Option<Option<DateTime<Utc>>>,
    pub status: Option<CodeStatus>,
    /// Coupons only: the new rules (replace the old ones).
    #[schema(value_type = Option<Rules>)]
    pub rules: Option<serde_json::Value>,
    /// Per-code metric series on or off (never for bulk codes).
    pub tracked: Option<bool>,
}

/// Tells "absent" (None) from "null" (Some(None)).
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Changes a code: Postgres first (under the code's row lock, which waits for
/// commits in flight), then the gate at once: the controls (status, window)
/// and the limit. Returns the changed code once Postgres has committed: from
/// then on no use commits against a paused or ended code (the commit checks).
pub async fn change_code(pg: &Pool, gate: &Gate, code: &Code, change: ChangeCode) -> Result<Code, ApiError> {
    if code.status == CodeStatus::Ended && change.status.is_some_and(|s| s != CodeStatus::Ended) {
        return Err(ApiError::CodeEnded);
    }
    if change.per_user_limit.is_some() && code.kind != CodeKind::Coupon {
        return Err(invalid("per_user_limit applies to coupons only"));
    }
    if change.rules.is_some() && code.kind != CodeKind::Coupon {
        return Err(invalid("rules apply to coupons only"));
    }
    if change.tracked == Some(true) && code.batch.is_some() {
        return Err(invalid("bulk codes are never tracked: one metric series per code would have no bound"));
    }
    let store_change = CodeChange {
        limit: change.limit.map(check_limit).transpose()?,
        per_user_limit: change
            .per_user_limit
            .map(|p| if (1..=1000).contains(&p) { Ok(p as i32) } else { Err(invalid("per_user_limit must be 1-1000")) })
            .transpose()?,
        starts_at: change.starts_at,
        ends_at: change.ends_at,
        status: change.status,
        rules: change.rules.as_ref().map(check_rules).transpose()?,
        tracked: change.tracked,
    };
    let mut db = pg.get().await.map_err(StoreError::from)?;
    let (changed, limit_version) = match store::change_code(&mut db, code, &store_change).await? {
        ChangeOutcome::Changed(c, v) => (*c, v),
        ChangeOutcome::LimitBelowUse { highest_ticket } => {
            return Err(invalid(format!(
                "limit must stay above the highest slot in use ({highest_ticket}); it can go down to {}",
                highest_ticket + 1
            )))
        }
        ChangeOutcome::BadWindow => return Err(invalid("starts_at must be before ends_at")),
    };
    if store_change.status.is_some() || store_change.starts_at.is_some() || store_change.ends_at.is_some() {
        // Every gateway's claims refuse from now on. If Redis does not answer,
        // the change still binds (the commit checks it) and the reconciler
        // writes it into the gate on its next pass.
        if let Err(e) = gate.set_status(&changed.code, &Controls::of(&changed)).await {
            tracing::warn!(code = %changed.code, error = %e, "code changed; its gate controls are left to the reconciler");
        }
    }
    if let Some(limit) = store_change.limit {
        // Tickets already handed out at or above a lowered limit fail their
        // commit (the trigger reads the new limit); new ones are not handed out.
        // If this fails (Redis down: the admin sees 503 though Postgres holds
        // the new limit), the reconciler's next pass compares and repairs it;
        // the version keeps a late call from undoing a newer one.
        gate.set_limit(&changed.code, limit, limit_version).await?;
    }
    tracing::info!(code = %changed.code, limit = changed.limit, status = changed.status.as_str(), "code changed");
    Ok(changed)
}

#[derive(Debug, Deserialize)]
pub struct BulkCodes {
    /// Prefix of every code, 1-20 characters of `A-Z 0-9 _ -`.
    pub prefix: String,
    /// How many codes, 1 to 100,000. Each is single-use (limit 1).
    pub count: i64,
    /// The campaign the codes belong to (defaults to the prefix); 1-64 characters.
    pub batch: Option<String>,
    /// Must be absent or false: bulk codes are never tracked in the metrics.
    pub tracked: Option<bool>,
    /// As for one code (credit: amount; voucher/coupon: reward, rules).
    #[serde(flatten)]
    pub template: BulkTemplate,
}

#[derive(Debug, Deserialize)]
pub struct BulkTemplate {
    pub kind: Option<CodeKind>,
    /// Credit codes only, 1 to 10^12.
    pub amount: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub time_zone: Option<String>,
    /// As for one code: by `kind`.
    pub reward: Option<serde_json::Value>,
    pub rules: Option<serde_json::Value>,
}

/// A bulk request that has passed every rule.
struct ValidBulk {
    prefix: CodeName,
    count: i64,
    template: CreateCode,
    valid: ValidCode,
    batch: String,
}

fn check_bulk(input: BulkCodes, default_tz: &str) -> Result<ValidBulk, ApiError> {
    let prefix = CodeName::parse(&input.prefix)?;
    if prefix.as_str().len() > 20 {
        return Err(invalid("prefix must be at most 20 characters"));
    }
    if !(1..=MAX_BULK).contains(&input.count) {
        return Err(invalid(format!("count must be between 1 and {MAX_BULK}")));
    }
    if input.tracked == Some(true) {
        return Err(invalid("bulk codes are never tracked: one metric series per code would have no bound"));
    }
    let t = input.template;
    let template = CreateCode {
        code: prefix.as_str().to_string(),
        kind: t.kind,
        amount: t.amount,
        limit: 1,
        per_user_limit: None,
        starts_at: t.starts_at,
        ends_at: t.ends_at,
        time_zone: t.time_zone,
        reward: t.reward,
        rules: t.rules,
        tracked: None,
    };
    let valid = validate(&template, default_tz)?;
    let batch = input.batch.unwrap_or_else(|| prefix.as_str().to_string());
    if !crate::text::is_label(&batch, 64) {
        return Err(invalid("batch must be 1-64 characters, none of them a control character"));
    }
    Ok(ValidBulk { prefix, count: input.count, template, valid, batch })
}

/// The server's verdict on a create request, without the database (the
/// spec's per-kind shapes are tested against it: `codes::contract`).
pub fn validate_create(input: &CreateCode) -> Result<(), ApiError> {
    CodeName::parse(&input.code)?;
    validate(input, "Asia/Tehran").map(|_| ())
}

/// The same for a bulk request.
pub fn validate_bulk(input: BulkCodes) -> Result<(), ApiError> {
    check_bulk(input, "Asia/Tehran").map(|_| ())
}

/// No 0/O or 1/I: codes get read aloud and typed from paper.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// 12 symbols of 32: 60 bits, so guessing one is hopeless.
const RANDOM_PART: usize = 12;

fn random_code(prefix: &str, rng: &mut impl Rng) -> String {
    let tail: String = (0..RANDOM_PART).map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char).collect();
    format!("{prefix}-{tail}")
}

/// Generates `count` unique single-use codes (from the OS's CSPRNG), stores
/// them in one statement and loads them into the gate. Returns their names.
pub async fn bulk_generate(
    pg: &Pool,
    gate: &Gate,
    input: BulkCodes,
    default_tz: &str,
) -> Result<Vec<String>, ApiError> {
    let ValidBulk { prefix, count, template, valid, batch } = check_bulk(input, default_tz)?;
    let mut rng = rand::rngs::OsRng;
    let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    while names.len() < count as usize {
        names.insert(random_code(prefix.as_str(), &mut rng));
    }
    let names: Vec<String> = names.into_iter().collect();
    let db = pg.get().await.map_err(StoreError::from)?;
    let inserted = store::insert_bulk(
        &db,
        &names,
        &store::BulkSpec {
            kind: valid.kind,
            amount: valid.amount,
            starts_at: template.starts_at,
            ends_at: template.ends_at,
            time_zone: &valid.time_zone,
            reward: &valid.reward,
            rules: &valid.rules,
            batch: &batch,
        },
    )
    .await?;
    if inserted != names.len() as u64 {
        // 60 random bits make a clash with an existing code all but impossible;
        // if it happens, nothing was written (one statement) and a retry is fine.
        return Err(ApiError::CodeExists);
    }
    let controls = Controls {
        status: "active",
        starts_ms: template.starts_at.map(|t| t.timestamp_millis()),
        ends_ms: template.ends_at.map(|t| t.timestamp_millis()),
        rev: 0,
    };
    if let Err(e) = gate.install_fresh(&names, 1, &controls).await {
        tracing::warn!(batch, error = %e, "bulk codes created; their gate state is left to the reconciler");
    }
    tracing::info!(batch, count = names.len(), "codes generated");
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_valid_names_of_the_right_shape() {
        let mut rng = rand::thread_rng();
        let code = random_code("NOWRUZ", &mut rng);
        assert!(CodeName::parse(&code).is_ok());
        assert_eq!(code.len(), "NOWRUZ-".len() + RANDOM_PART);
        assert!(code["NOWRUZ-".len()..].bytes().all(|b| CODE_ALPHABET.contains(&b)));
    }

    #[test]
    fn create_requests_are_checked_per_kind() {
        let base = CreateCode::credit("X".into(), 100, 10);
        assert!(validate(&base, "Asia/Tehran").is_ok());
        let mut voucher = base.clone();
        voucher.kind = Some(CodeKind::Voucher);
        assert!(validate(&voucher, "Asia/Tehran").is_err(), "a voucher has no amount");
        voucher.amount = None;
        voucher.reward = Some(
            serde_json::json!({"percent": 30, "max_amount": 50000, "voucher_type": "mobile_topup", "valid_days": 30}),
        );
        assert!(validate(&voucher, "Asia/Tehran").is_ok());
        let mut coupon = voucher.clone();
        coupon.kind = Some(CodeKind::Coupon);
        assert!(validate(&coupon, "Asia/Tehran").is_err(), "a voucher reward is not a coupon reward");
        coupon.reward = Some(serde_json::json!({"kind": {"type": "percent", "percent": 10}, "max_discount": 1000}));
        coupon.rules = Some(serde_json::json!({"days_of_week": ["weekend"]}));
        assert!(validate(&coupon, "Asia/Tehran").is_ok(), "{:?}", validate(&coupon, "Asia/Tehran").err());
        coupon.time_zone = Some("Mars/Olympus".into());
        assert!(validate(&coupon, "Asia/Tehran").is_err());
    }
}
