//! The spec's shapes of the operators' create requests, one per kind: what
//! `admin::validate` accepts, stated so that a client generated from the
//! spec builds only bodies the server takes (a credit code has an `amount`
//! and no `reward`; a voucher campaign a `VoucherReward`; a coupon a
//! `CouponReward`, `rules` and a per-user limit). The server parses one
//! struct (`admin::CreateCode`, `admin::BulkCodes`) and checks the rules of
//! each kind in code; the tests below hold the two verdicts equal.
//!
//! Fields the server takes as `null` or ignores are left out of these
//! shapes (each refuses unknown fields): a generated client never needs
//! them, and a spec stricter than the server never rejects a good request.

use serde::Deserialize;
use utoipa::ToSchema;

use super::model::{CodeNameSchema, TimeZoneSchema, TimestampSchema, VoucherReward};
use crate::coupons::{CouponReward, Rules};

/// `credit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreditKind {
    Credit,
}

/// `voucher`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VoucherKind {
    Voucher,
}

/// `coupon`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CouponKind {
    Coupon,
}

/// A request shape: its own fields, then the window, time zone and metrics
/// switch every kind takes (spelled out, not flattened: a flat object is
/// what generators and fuzzers read best, and serde's `deny_unknown_fields`
/// does not work through `flatten`).
macro_rules! shape {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
            /// Redeemable from this instant (inclusive); before `ends_at`.
            #[schema(value_type = Option<TimestampSchema>)]
            pub starts_at: Option<String>,
            /// Redeemable until this instant (exclusive).
            #[schema(value_type = Option<TimestampSchema>)]
            pub ends_at: Option<String>,
            /// IANA name (default Asia/Tehran); day rules are judged in it.
            #[schema(value_type = Option<TimeZoneSchema>)]
            pub time_zone: Option<String>,
        }
    };
}

shape! {
    /// A credit code: the first `limit` users get `amount` each, once.
    CreateCreditCode {
        #[schema(value_type = CodeNameSchema)]
        code: String,
        /// `credit` (the default when absent).
        kind: Option<CreditKind>,
        /// Credit per redemption, integer Toman, 1 to 10^12.
        #[schema(example = 1000000, minimum = 1, maximum = 1000000000000_i64)]
        amount: i64,
        /// How many uses in all, 1 to 10,000,000.
        #[schema(example = 1000, minimum = 1, maximum = 10000000)]
        limit: i64,
        /// Always 1 for a credit code (each user once).
        #[schema(minimum = 1, maximum = 1)]
        per_user_limit: Option<i64>,
        /// Count its redemptions under its own name in the metrics (default
        /// false: they share the label `untracked`). Few codes, and only
        /// those whose name may be seen by whoever reads the metrics.
        tracked: Option<bool>,
    }
}

shape! {
    /// A first-N voucher campaign: the first `limit` users to log in to it
    /// get a voucher made from `reward`.
    CreateVoucherCode {
        #[schema(value_type = CodeNameSchema)]
        code: String,
        kind: VoucherKind,
        reward: VoucherReward,
        /// How many vouchers in all, 1 to 10,000,000.
        #[schema(example = 100, minimum = 1, maximum = 10000000)]
        limit: i64,
        /// Always 1 for a voucher campaign.
        #[schema(minimum = 1, maximum = 1)]
        per_user_limit: Option<i64>,
        /// As for a credit code.
        tracked: Option<bool>,
    }
}

shape! {
    /// A checkout coupon: `reward` off an order that meets `rules`, `limit`
    /// uses in all, `per_user_limit` per user.
    CreateCouponCode {
        #[schema(value_type = CodeNameSchema)]
        code: String,
        kind: CouponKind,
        reward: CouponReward,
        /// Eligibility rules (all must hold); absent for none.
        rules: Option<Rules>,
        /// How many uses in all, 1 to 10,000,000.
        #[schema(example = 1000, minimum = 1, maximum = 10000000)]
        limit: i64,
        /// Uses per user, 1-1000 (default 1).
        #[schema(minimum = 1, maximum = 1000)]
        per_user_limit: Option<i64>,
        /// As for a credit code.
        tracked: Option<bool>,
    }
}

/// `POST /admin/codes`: one shape per `kind`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreateCodeRequest {
    Credit(CreateCreditCode),
    Voucher(CreateVoucherCode),
    Coupon(CreateCouponCode),
}

shape! {
    /// Bulk credit codes: `amount` each. Bulk codes are single-use and
    /// never tracked in the metrics.
    BulkCreditCodes {
        /// Prefix of every code, 1-20 characters of `A-Z 0-9 _ -`.
        #[schema(example = "NOWRUZ", min_length = 1, max_length = 20, pattern = "^[A-Za-z0-9_-]{1,20}$")]
        prefix: String,
        /// How many codes, 1 to 100,000.
        #[schema(example = 1000, minimum = 1, maximum = 100000)]
        count: i64,
        /// The campaign the codes belong to (defaults to the prefix); 1-64 characters.
        #[schema(value_type = Option<crate::text::Label>)]
        batch: Option<String>,
        kind: Option<CreditKind>,
        /// Credit per redemption, integer Toman, 1 to 10^12.
        #[schema(minimum = 1, maximum = 1000000000000_i64)]
        amount: i64,
    }
}

shape! {
    /// Bulk voucher codes: each a campaign of one.
    BulkVoucherCodes {
        /// As for credit codes.
        #[schema(example = "NOWRUZ", min_length = 1, max_length = 20, pattern = "^[A-Za-z0-9_-]{1,20}$")]
        prefix: String,
        #[schema(example = 1000, minimum = 1, maximum = 100000)]
        count: i64,
        #[schema(value_type = Option<crate::text::Label>)]
        batch: Option<String>,
        kind: VoucherKind,
        reward: VoucherReward,
    }
}

shape! {
    /// Bulk coupon codes: each single-use.
    BulkCouponCodes {
        /// As for credit codes.
        #[schema(example = "NOWRUZ", min_length = 1, max_length = 20, pattern = "^[A-Za-z0-9_-]{1,20}$")]
        prefix: String,
        #[schema(example = 1000, minimum = 1, maximum = 100000)]
        count: i64,
        #[schema(value_type = Option<crate::text::Label>)]
        batch: Option<String>,
        kind: CouponKind,
        reward: CouponReward,
        rules: Option<Rules>,
    }
}

/// `POST /admin/codes/bulk`: one shape per `kind`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BulkCodesRequest {
    Credit(BulkCreditCodes),
    Voucher(BulkVoucherCodes),
    Coupon(BulkCouponCodes),
}

#[cfg(test)]
mod tests {
    //! The shapes above and the server's own checks give one verdict.

    use serde_json::{json, Value};

    use super::{BulkCodesRequest, CreateCodeRequest};
    use crate::codes::admin::{validate_bulk, validate_create, BulkCodes, CreateCode};

    /// A bound the served spec states for a per-kind shape.
    fn spec_bound(schema: &str, pointer: &str) -> i64 {
        use utoipa::OpenApi;
        let spec = serde_json::to_value(crate::http::openapi::ApiDoc::openapi()).unwrap_or_default();
        let at = format!("/components/schemas/{schema}/properties/{pointer}");
        spec.pointer(&at).and_then(Value::as_i64).unwrap_or_else(|| panic!("no bound at {at}"))
    }

    /// The spec's verdict: the body fits a shape (serde checks the shape,
    /// required fields and unknown ones) and the per-user limit fits that
    /// shape's bounds (the one bound these cases vary).
    fn spec_takes_create(body: &Value) -> bool {
        let within = |schema: &str, p: &Option<i64>| {
            p.is_none_or(|p| {
                (spec_bound(schema, "per_user_limit/minimum")..=spec_bound(schema, "per_user_limit/maximum"))
                    .contains(&p)
            })
        };
        match serde_json::from_value::<CreateCodeRequest>(body.clone()) {
            Ok(CreateCodeRequest::Credit(c)) => within("CreateCreditCode", &c.per_user_limit),
            Ok(CreateCodeRequest::Voucher(c)) => within("CreateVoucherCode", &c.per_user_limit),
            Ok(CreateCodeRequest::Coupon(c)) => within("CreateCouponCode", &c.per_user_limit),
            Err(_) => false,
        }
    }

    fn server_takes_create(body: &Value) -> bool {
        serde_json::from_value::<CreateCode>(body.clone()).is_ok_and(|c| validate_create(&c).is_ok())
    }

    fn server_takes_bulk(body: &Value) -> bool {
        serde_json::from_value::<BulkCodes>(body.clone()).is_ok_and(|b| validate_bulk(b).is_ok())
    }

    fn cases() -> Vec<Value> {
        let voucher = json!({"percent": 30, "voucher_type": "mobile_topup", "valid_days": 30});
        let coupon = json!({"kind": {"type": "fixed", "amount": 5000}});
        let rules = json!({"days_of_week": ["weekend"]});
        let mut out = vec![];
        for kind in [None, Some("credit"), Some("voucher"), Some("coupon")] {
            for amount in [None, Some(json!(100))] {
                for reward in [None, Some(voucher.clone()), Some(coupon.clone())] {
                    for rules in [None, Some(rules.clone())] {
                        for per_user in [None, Some(1), Some(2)] {
                            let mut body = json!({"limit": 10, "count": 3});
                            let fields = [
                                ("kind", kind.map(Value::from)),
                                ("amount", amount.clone()),
                                ("reward", reward.clone()),
                                ("rules", rules.clone()),
                                ("per_user_limit", per_user.map(Value::from)),
                            ];
                            for (name, value) in fields {
                                if let Some(v) = value {
                                    body[name] = v;
                                }
                            }
                            out.push(body);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_create_body_fits_the_spec_exactly_when_the_server_takes_it() {
        let mut taken = 0;
        for (i, mut body) in cases().into_iter().enumerate() {
            body["code"] = json!(format!("C{i}"));
            body.as_object_mut().map(|o| o.remove("count"));
            let spec = spec_takes_create(&body);
            assert_eq!(spec, server_takes_create(&body), "{body}");
            taken += usize::from(spec);
        }
        assert!(taken >= 4, "too few accepted cases to mean anything: {taken}");
    }

    #[test]
    fn a_bulk_body_fits_the_spec_exactly_when_the_server_takes_it() {
        let mut taken = 0;
        for mut body in cases() {
            // Bulk codes are single-use: no limit, no per-user limit.
            body["prefix"] = json!("NOWRUZ");
            body.as_object_mut().map(|o| o.remove("limit"));
            if body.get("per_user_limit").is_some() {
                continue;
            }
            let spec = serde_json::from_value::<BulkCodesRequest>(body.clone()).is_ok();
            assert_eq!(spec, server_takes_bulk(&body), "{body}");
            taken += usize::from(spec);
        }
        assert!(taken >= 3, "too few accepted cases to mean anything: {taken}");
    }
}
