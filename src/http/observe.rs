//! Per-request observability: a request id (taken from `X-Request-Id` when the
//! caller sends a sane one, else made up) echoed in the response and carried by
//! the request's tracing span into every log line; request counts and latency
//! by route pattern; and GET /metrics for Prometheus.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use tracing::Instrument;

use crate::startup::AppState;
use crate::telemetry::{self, HTTP_DURATION, HTTP_REQUESTS, POOL_IDLE, POOL_SIZE, POOL_WAITING};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served (in its extensions).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn request_id_of(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// The middleware: span, request id, metrics.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id_of(&req);
    let method = req.method().to_string();
    // The pattern ("/admin/codes/{code}"), never the raw path: bounded label values.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(id.clone()));
    let mut res = next.call(req).instrument(span).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    let status = res.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels[..2]).record(started.elapsed().as_secs_f64());
    Ok(res)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    super::route(cfg, actix_web::http::Method::GET, "/metrics", metrics_route);
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics_route(state: web::Data<AppState>) -> HttpResponse {
    record_pool_gauges(&state);
    let body = telemetry::prometheus().map(|h| h.render()).unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

fn record_pool_gauges(state: &AppState) {
    let pg = state.pg.status();
    let redis = state.redis.status();
    for (pool, s) in [("postgres", pg), ("redis", redis)] {
        metrics::gauge!(POOL_SIZE, "pool" => pool).set(s.size as f64);
        metrics::gauge!(POOL_IDLE, "pool" => pool).set(s.available as f64);
        metrics::gauge!(POOL_WAITING, "pool" => pool).set(s.waiting as f64);
    }
}
