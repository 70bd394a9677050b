//! The OpenAPI 3 document, generated from the handlers' annotations (so it
//! cannot drift from the code), served at /openapi.json, with Swagger UI at
//! /docs (assets vendored from crates.io: no download at build or run time).
//!
//! Every operation says who may call it: a security scheme per caller kind
//! (`bearer` a user, `admin` an admin, `service` a service with the scopes
//! listed) and a first line in its description. Operations tagged `admin`
//! get the admin scheme here, so an admin route cannot be documented as a
//! user's by mistake.

use actix_web::web::{self, Redirect};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::wallet::routes::VoucherPair;
use crate::{auth, codes, redemption, wallet};

#[derive(OpenApi)]
#[openapi(
    info(title = "Redeem Gateway", description = "Hands out limited rewards fairly under a traffic spike."),
    paths(
        super::health::healthz,
        super::health::readyz,
        auth::routes::register,
        auth::routes::login,
        auth::routes::disable_user,
        auth::routes::enable_user,
        auth::jwks::jwks,
        redemption::routes::use_code,
        wallet::routes::balance,
        wallet::routes::transactions,
        codes::routes::report_route,
        codes::routes::create_route,
        codes::routes::list_route,
        codes::routes::read_route,
        codes::routes::change_route,
        codes::routes::pause_route,
        codes::routes::resume_route,
        codes::routes::end_route,
        codes::routes::bulk_route,
        codes::live::events_route,
        crate::vouchers::routes::campaign_login,
        crate::vouchers::routes::my_vouchers,
        crate::coupons::routes::quote_route,
        crate::coupons::routes::redeem_route,
        crate::coupons::routes::cancel_route,
        wallet::routes::credit,
        wallet::routes::debit,
        super::dashboard::dashboard_route,
    ),
    modifiers(&CallerKinds, &VoucherPair),
    tags(
        (name = "codes", description = "Redeeming codes"),
        (name = "wallet", description = "Balances and history (users); credits and debits (services)"),
        (name = "auth", description = "Accounts and tokens"),
        (name = "vouchers", description = "First-N voucher campaigns"),
        (name = "coupons", description = "Checkout coupons: quote (users), redeem and cancel (the checkout service)"),
        (name = "admin", description = "Operators: codes and reports (admin token)"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

struct CallerKinds;

fn jwt_scheme(description: &str) -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").description(Some(description)).build(),
    )
}

impl Modify for CallerKinds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.responses.extend(crate::error::responses::components());
        components.add_security_scheme("bearer", jwt_scheme("A user's token, from /auth/login or /campaigns/login."));
        components.add_security_scheme(
            "admin",
            jwt_scheme("A token with the admin role (`redeem-gateway token --user NAME --admin`)."),
        );
        components.add_security_scheme(
            "service",
            jwt_scheme(
                "A service's token (`redeem-gateway token --service NAME --scope a,b`), with the scopes the \
                 operation lists. User and admin tokens are refused (403).",
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                mark_caller(op);
            }
        }
    }
}

/// The operation's security schemes by name, with their scopes.
fn schemes_of(op: &Operation) -> Vec<(String, Vec<String>)> {
    let requirements = serde_json::to_value(&op.security).unwrap_or_default();
    let mut out = vec![];
    for requirement in requirements.as_array().into_iter().flatten() {
        for (name, scopes) in requirement.as_object().into_iter().flatten() {
            let scopes = scopes.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from));
            out.push((name.clone(), scopes.collect()));
        }
    }
    out
}

/// Admin-tagged operations take the admin scheme; every description starts
/// with who may call the operation.
fn mark_caller(op: &mut Operation) {
    let admin = op.tags.as_ref().is_some_and(|t| t.iter().any(|t| t == "admin"));
    if admin {
        op.security = Some(vec![SecurityRequirement::new("admin", Vec::<String>::new())]);
    }
    let caller = match schemes_of(op).first() {
        None => "anyone, no token".to_string(),
        Some((name, _)) if name == "admin" => "an admin (admin token)".to_string(),
        Some((name, scopes)) if name == "service" => {
            format!("a service (service token with scope {}); user and admin tokens get 403", scopes.join(", "))
        }
        Some(_) => "a user (user token); service tokens get 403".to_string(),
    };
    let line = format!("**Caller:** {caller}.");
    op.description = Some(match op.description.take().filter(|d| !d.is_empty()) {
        Some(d) => format!("{line}\n\n{d}"),
        None => line,
    });
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // `/docs` (what the README, the dashboard and the spec say) moves for
    // good to `/docs/`, where Swagger UI's relative asset paths resolve.
    cfg.route("/docs", web::get().to(|| async { Redirect::to("/docs/").permanent() }));
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()));
}

#[cfg(test)]
mod tests {
    //! The document itself, without a server: valid enough for generators
    //! (every response described, every `$ref` resolves) and in step with
    //! the constants the server validates with.

    use serde_json::Value;

    use super::ApiDoc;
    use utoipa::OpenApi;

    fn spec() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
    }

    /// Every `$ref` in `v`, with where it was found.
    fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "$ref" {
                        if let Some(r) = child.as_str() {
                            out.push((at.clone(), r));
                        }
                    } else {
                        refs(child, format!("{at}/{k}"), out);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    refs(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// The limits the spec states, against the constants the server's
    /// validators use (the integration test feeds the boundaries to a server).
    #[test]
    fn the_spec_states_the_servers_constants() {
        use crate::auth::routes::{Username, PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};
        use crate::codes::admin::{MAX_AMOUNT, MAX_BULK, MAX_LIMIT};
        use crate::codes::CodeName;
        use crate::coupons::rules::{MAX_LIST_LEN, MAX_STR_LEN};
        let spec = spec();
        let s = "/components/schemas";
        let expected: &[(String, i64)] = &[
            (format!("{s}/CodeName/maxLength"), CodeName::MAX_LEN as i64),
            (format!("{s}/CreateCreditCode/properties/amount/maximum"), MAX_AMOUNT),
            (format!("{s}/CreateCreditCode/properties/limit/maximum"), MAX_LIMIT),
            (format!("{s}/CreateVoucherCode/properties/limit/maximum"), MAX_LIMIT),
            (format!("{s}/CreateCouponCode/properties/limit/maximum"), MAX_LIMIT),
            (format!("{s}/ChangeCode/properties/limit/maximum"), MAX_LIMIT),
            (format!("{s}/BulkCreditCodes/properties/amount/maximum"), MAX_AMOUNT),
            (format!("{s}/BulkCreditCodes/properties/count/maximum"), MAX_BULK),
            (format!("{s}/BulkVoucherCodes/properties/count/maximum"), MAX_BULK),
            (format!("{s}/BulkCouponCodes/properties/count/maximum"), MAX_BULK),
            (format!("{s}/CreditRequest/properties/amount/maximum"), crate::wallet::service::MAX_AMOUNT),
            (format!("{s}/DebitRequest/properties/amount/maximum"), crate::wallet::service::MAX_AMOUNT),
            (format!("{s}/RegisterRequest/properties/username/minLength"), Username::MIN_LEN as i64),
            (format!("{s}/RegisterRequest/properties/username/maxLength"), Username::MAX_LEN as i64),
            (format!("{s}/RegisterRequest/properties/password/minLength"), PASSWORD_MIN_CHARS as i64),
            (format!("{s}/RegisterRequest/properties/password/maxLength"), PASSWORD_MAX_CHARS as i64),
            (format!("{s}/RuleString/maxLength"), MAX_STR_LEN as i64),
            (format!("{s}/Rules/properties/skus/maxItems"), MAX_LIST_LEN as i64),
            (format!("{s}/Rules/properties/users/maxItems"), MAX_LIST_LEN as i64),
            (format!("{s}/Rules/properties/days_of_week/maxItems"), MAX_LIST_LEN as i64),
        ];
        for (pointer, want) in expected {
            let got = spec.pointer(pointer).and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
            assert_eq!(got, Some(*want), "{pointer}");
        }
        let pattern = spec.pointer(&format!("{s}/CodeName/pattern")).and_then(|v| v.as_str());
        assert_eq!(pattern, Some(CodeName::pattern(CodeName::MAX_LEN).as_str()));
    }

    #[test]
    fn every_response_has_a_description_and_every_ref_resolves() {
        let spec = spec();
        let mut seen = 0;
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let responses = op["responses"].as_object();
                assert!(responses.is_some_and(|r| !r.is_empty()), "{method} {path}: no responses");
                for (status, response) in responses.into_iter().flatten() {
                    seen += 1;
                    let resolved = match response["$ref"].as_str() {
                        Some(r) => spec.pointer(r.trim_start_matches('#')).cloned().unwrap_or_default(),
                        None => response.clone(),
                    };
                    let description = resolved["description"].as_str().unwrap_or_default();
                    assert!(!description.trim().is_empty(), "{method} {path} {status}: no description");
                }
            }
        }
        assert!(seen > 100, "only {seen} responses");
        let mut found = vec![];
        refs(&spec, String::new(), &mut found);
        assert!(found.len() > 50);
        for (at, r) in found {
            assert!(r.starts_with("#/"), "{at}: external $ref {r}");
            assert!(spec.pointer(&r[1..]).is_some(), "{at}: $ref {r} does not resolve");
        }
    }
}
