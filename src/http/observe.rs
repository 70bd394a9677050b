//! Per-request observability: a request id (taken from `X-Request-Id` when the
//! caller sends a sane one, else made up) echoed in the response and carried by
//! the request's tracing span into every log line; request counts and latency
//! by route pattern; and GET /metrics for Prometheus — on the metrics
//! listener only (`METRICS_ADDR`), never on the public one.
//!
//! Every label value comes from a fixed set, never from what a client sent:
//! the route pattern (or `unmatched`), one of a few methods (or `other`),
//! the status we answered.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use tracing::Instrument;

use crate::state::AppState;
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
    let method = method_label(req.method());
    // The pattern ("/admin/codes/{code}"), never the raw path: bounded label values.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(id.clone()));
    let mut res = next.call(req).instrument(span).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    let status = res.status().as_u16().to_string();
    let labels = [("route", route), ("method", method.to_string()), ("status", status)];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels[..2]).record(started.elapsed().as_secs_f64());
    Ok(res)
}

/// The method as a label: the ones this API uses, anything else `other`
/// (a client may send any token as a method, thousands of bytes long).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The metrics listener's app: GET /metrics and nothing else.
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics_route));
}

/// Prometheus metrics (text exposition format), on `METRICS_ADDR` only.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        let odd = Method::from_bytes("X".repeat(4000).as_bytes()).ok();
        assert_eq!(odd.as_ref().map(method_label), Some("other"));
        assert_eq!(Method::from_bytes(b"PROPFIND").ok().as_ref().map(method_label), Some("other"));
    }
}
