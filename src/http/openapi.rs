//! The OpenAPI 3 document, generated from the handlers' annotations (so it
//! cannot drift from the code), served at /openapi.json, with Swagger UI at
//! /docs (assets vendored from crates.io: no download at build or run time).

use actix_web::web;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
        super::dashboard::dashboard_route,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "codes", description = "Redeeming codes"),
        (name = "wallet", description = "Balances and history"),
        (name = "auth", description = "Accounts and tokens"),
        (name = "vouchers", description = "First-N voucher campaigns"),
        (name = "coupons", description = "Checkout coupons"),
        (name = "admin", description = "Operators: codes and reports (admin token)"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()));
}
