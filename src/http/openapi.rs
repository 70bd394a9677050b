//! The OpenAPI 3 document, generated from the handlers' annotations (so it
//! cannot drift from the code), served at /openapi.json, with Swagger UI at
//! /docs (assets vendored from crates.io: no download at build or run time).
//!
//! Every operation says who may call it: a security scheme per caller kind
//! (`bearer` a user, `admin` an admin, `service` a service with the scopes
//! listed) and a first line in its description. Operations tagged `admin`
//! get the admin scheme here, so an admin route cannot be documented as a
//! user's by mistake.

use actix_web::web;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

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
    modifiers(&CallerKinds),
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
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()));
}
