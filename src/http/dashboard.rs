//! GET /dashboard: one static page (no external assets) that shows each
//! active code's redeemed / remaining / rejections and a live
//! redemptions-per-second chart. The operator pastes an admin token into the
//! page; it is kept in the tab's memory only and sent as a bearer header.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

const PAGE: &str = include_str!("../../web/dashboard.html");

pub fn configure(cfg: &mut web::ServiceConfig) {
    super::route(cfg, Method::GET, "/dashboard", dashboard_route);
}

/// The live campaign dashboard (HTML).
#[utoipa::path(get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "the dashboard page", content_type = "text/html", body = String)))]
pub async fn dashboard_route() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ))
        .insert_header(("Cache-Control", "no-store"))
        .body(PAGE)
}
