//! Coupons at the checkout: the quote (what a coupon would take off an
//! order, consuming nothing), the redeem (one use per (code, order), through
//! the one `through_gate`, the order held by the user it was first recorded
//! for) and the cancel (the use goes back, once). Knows the stores and the
//! gate path, not HTTP.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::rules::MAX_ORDER_LINES;
use super::store::{self, Cancelled, CouponUse, NewUse};
use super::{quote, Context, Order, Quote};
use crate::codes::{CachedCode, CodeKind, CodeName};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::ratelimit::ClientAddr;
use crate::redemption::service::{lookup, through_gate};
use crate::state::AppState;

/// Size limits on a checkout's order (the rules judge the rest); the
/// spec's `Order` states the same bounds.
pub fn check_order(order: &Order) -> Result<(), ApiError> {
    // Characters, as the schema's maxLength and the database's length() count.
    let short = |s: &str| crate::text::is_label(s, crate::text::LABEL_MAX);
    if !short(&order.number) || !short(&order.payment_method) {
        return Err(ApiError::InvalidInput(
            "order number and payment method must be 1-64 characters, none of them a control character".into(),
        ));
    }
    if order.lines.is_empty() || order.lines.len() > MAX_ORDER_LINES {
        return Err(ApiError::InvalidInput(format!("an order has 1-{MAX_ORDER_LINES} lines")));
    }
    if order.lines.iter().any(|l| !short(&l.sku) || !short(&l.category)) {
        return Err(ApiError::InvalidInput(
            "sku and category must be 1-64 characters, none of them a control character".into(),
        ));
    }
    Ok(())
}

/// The coupon a user names, with code guessing limited: a code this
/// gateway has never seen costs a peek at the caller's guessing budgets
/// before the database is asked, and an unknown one takes a guess from them.
pub async fn guarded_coupon(
    state: &AppState,
    user_id: i64,
    addr: &ClientAddr,
    raw: &str,
) -> Result<Arc<CachedCode>, ApiError> {
    let name = CodeName::parse(raw)?;
    if !state.codes.has_entry(name.as_str()) {
        state.limiter.guard_unknown_lookup(user_id, addr).await?;
    }
    let found = coupon(state, name.as_str()).await;
    if matches!(found, Err(ApiError::CodeNotFound)) {
        state.limiter.charge_unknown_code(user_id, addr).await?;
    }
    found
}

async fn coupon(state: &AppState, raw: &str) -> Result<Arc<CachedCode>, ApiError> {
    let code = lookup(state, &CodeName::parse(raw)?).await?;
    if code.code.kind != CodeKind::Coupon {
        return Err(ApiError::CodeNotFound);
    }
    Ok(code)
}

#[derive(Serialize, ToSchema)]
pub struct QuoteResponse {
    pub code: String,
    #[serde(flatten)]
    pub quote: Quote,
    /// Set when the code itself cannot be used now (paused, ended, outside its window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_active: Option<String>,
}

pub fn quote_for(state: &AppState, code: &CachedCode, user_id: i64, order: &Order) -> Result<QuoteResponse, ApiError> {
    let rules = code.code.coupon_rules()?;
    let reward = code.code.coupon_reward()?;
    let ctx = Context { user_id, order, now: Utc::now(), tz: code.code.tz(), weekend: &state.config.weekend };
    let mut q = quote(&rules, &reward, &ctx);
    let not_active = code.code.check_redeemable(Utc::now()).err().map(|e| e.to_string());
    if not_active.is_some() {
        q.eligible = false;
        q.discount = 0;
        q.new_total = q.order_total;
    }
    Ok(QuoteResponse { code: code.code.code.clone(), quote: q, not_active })
}

/// One use of coupon `name` for `user_id`'s `order`, as sent by a checkout.
/// Idempotent per (code, order number): a retry for the same user replays
/// the recorded use; the order number of another user is refused.
pub async fn redeem(state: &Arc<AppState>, user_id: i64, name: &CodeName, order: Order) -> Result<CouponUse, ApiError> {
    let code = coupon(state, name.as_str()).await?;
    // A retry of a recorded use is answered first, even if the user was
    // disabled since: the checkout must learn the use went through.
    if let Some(done) = recorded_use(state, &code, &order.number).await? {
        return replay(done, user_id);
    }
    if state.disabled_users.contains(user_id) {
        return Err(ApiError::UserDisabled);
    }
    let q = quote_for(state, &code, user_id, &order)?;
    if let Some(why) = q.not_active {
        return Err(ApiError::NotEligible(why));
    }
    if !q.quote.eligible {
        let reasons: Vec<&str> = q.quote.reasons.iter().map(|r| r.code()).collect();
        return Err(ApiError::NotEligible(format!("not eligible: {}", reasons.join(", "))));
    }
    let holder = format!("order:{}", order.number);
    let (code_id, code_name) = (code.code.id, code.code.code.clone());
    let (order_total, discount) = (q.quote.order_total, q.quote.discount);
    let result = through_gate(state, &code, user_id, &holder, |ticket| {
        let (code_name, number) = (code_name.clone(), order.number.clone());
        async move {
            let db = state.pg.get().await?;
            let new =
                NewUse { code_id, code: &code_name, user_id, order_number: &number, ticket, order_total, discount };
            store::record_use(&db, &new).await
        }
    })
    .await;
    match result {
        // The order's holder is claimed: another request for it is in flight
        // or done. Wait for its row and answer the same.
        Err(ApiError::AlreadyRedeemed) => match wait_for_use(state, &code, &order.number).await? {
            Some(done) => replay(done, user_id),
            None => Err(ApiError::TryAgain("this order's coupon is still being applied")),
        },
        other => other,
    }
}

/// The recorded use answers a retry by its own user; the order number is
/// taken for anyone else, for good.
/// A cancelled use holds no slot, so it is no discount to apply: 409.
fn replay(done: CouponUse, user_id: i64) -> Result<CouponUse, ApiError> {
    if done.user_id != user_id {
        Err(ApiError::OrderBelongsToAnotherUser)
    } else if done.status == "cancelled" {
        Err(ApiError::AlreadyCancelled)
    } else {
        Ok(done)
    }
}

async fn recorded_use(state: &AppState, code: &CachedCode, number: &str) -> Result<Option<CouponUse>, ApiError> {
    let db = state.pg.get().await.map_err(StoreError::from)?;
    Ok(store::find_use(&db, code.code.id, number).await?)
}

/// Polls for the order's use while a concurrent request commits it (bounded
/// by the statement timeout, so never longer than a commit can take).
async fn wait_for_use(state: &AppState, code: &CachedCode, number: &str) -> Result<Option<CouponUse>, ApiError> {
    let deadline = tokio::time::Instant::now() + state.config.pg_statement_timeout + Duration::from_secs(1);
    loop {
        if let Some(done) = recorded_use(state, code, number).await? {
            return Ok(Some(done));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::TryAgain("this order's coupon is still being applied"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[derive(Serialize, ToSchema)]
pub struct CancelResponse {
    pub redemption_id: i64,
    pub status: &'static str,
}

/// The order was cancelled: the coupon's use goes back (the slot is
/// redeemable again), exactly once.
pub async fn cancel(state: &AppState, id: i64) -> Result<CancelResponse, ApiError> {
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let (code, order_number, ticket, first) = match store::cancel(&db, id).await? {
        Cancelled::NotFound => return Err(ApiError::NotFound("coupon redemption")),
        Cancelled::Now { code, order_number, ticket, .. } => (code, order_number, ticket, true),
        Cancelled::Already { code, order_number, ticket, .. } => (code, order_number, ticket, false),
    };
    // Give the ticket back, from the row's word: through the order's claim,
    // or, if Redis forgot the claim, only if no claim holds the ticket and it
    // is not free already (lua/cancel.lua), so a repeat (or a retry after a
    // failed step) can never return it twice. If Redis is down now, the
    // reconciler's audit gives it back (the cancel bumped codes.slot_changes).
    let holder = format!("order:{order_number}");
    state.gate.give_back(&code, &holder, ticket).await?;
    if let Some(hints) = state.codes.hints_of(&code) {
        hints.clear_sold_out();
    }
    if first {
        tracing::info!(code, order_number, ticket, "coupon use cancelled");
        Ok(CancelResponse { redemption_id: id, status: "cancelled" })
    } else {
        Err(ApiError::AlreadyCancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_BODY_LIMIT_BYTES;
    use crate::coupons::OrderLine;
    use crate::text::LABEL_MAX;

    /// serde_json's output with the separators Python's `json.dumps` (and
    /// so `requests` and schemathesis) writes by default: `", "` and `": "`.
    struct Spaced;

    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }

    fn spaced_len(value: &impl Serialize) -> usize {
        let mut out = Vec::new();
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, Spaced)).unwrap();
        out.len()
    }

    /// The largest order the spec allows: every string [`LABEL_MAX`]
    /// characters of the widest UTF-8 (4 bytes; JSON escapes nothing in
    /// them: control characters are refused, and `"` or `\\` take 2),
    /// every number the widest an i64 writes, [`MAX_ORDER_LINES`] lines.
    fn largest_order(lines: usize) -> Order {
        let widest = "\u{10ffff}".repeat(LABEL_MAX);
        let line =
            OrderLine { sku: widest.clone(), category: widest.clone(), unit_price: i64::MIN, quantity: i64::MIN };
        Order { number: widest.clone(), payment_method: widest, lines: vec![line; lines] }
    }

    #[test]
    fn the_largest_order_fits_the_body_limit() {
        let order = largest_order(MAX_ORDER_LINES);
        assert!(check_order(&order).is_ok(), "the largest order is one check_order takes");
        assert!(check_order(&largest_order(MAX_ORDER_LINES + 1)).is_err());
        // A redeem (the bigger of the two bodies that carry an order): the
        // longest code name and the widest user id around it.
        let body = serde_json::json!({
            "code": "C".repeat(CodeName::MAX_LEN),
            "user_id": i64::MIN,
            "order": order,
        });
        let size = spaced_len(&body);
        assert!(
            size <= DEFAULT_BODY_LIMIT_BYTES,
            "the largest redeem body the spec allows is {size} bytes, over the {DEFAULT_BODY_LIMIT_BYTES}-byte body limit"
        );
        assert!(size >= serde_json::to_vec(&body).unwrap().len());
    }

    #[test]
    fn the_spec_states_the_order_bounds_check_order_applies() {
        use utoipa::OpenApi;
        let spec = serde_json::to_value(crate::http::openapi::ApiDoc::openapi()).unwrap();
        let schemas = &spec["components"]["schemas"];
        let lines = &schemas["Order"]["properties"]["lines"];
        assert_eq!(lines["maxItems"], serde_json::json!(MAX_ORDER_LINES), "{lines}");
        assert_eq!(lines["minItems"], serde_json::json!(1));
        assert_eq!(schemas["Label"]["maxLength"], serde_json::json!(LABEL_MAX));
        assert_eq!(schemas["Label"]["pattern"], serde_json::json!(crate::text::NO_CONTROL_PATTERN));
        for (schema, field) in
            [("Order", "number"), ("Order", "payment_method"), ("OrderLine", "sku"), ("OrderLine", "category")]
        {
            let property = serde_json::to_string(&schemas[schema]["properties"][field]).unwrap();
            assert!(property.contains("#/components/schemas/Label"), "{schema}.{field}: {property}");
        }
    }
}
