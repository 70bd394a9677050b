//! Per-request observability: a request id (taken from `X-Request-Id` when the
//! caller sends a sane one, else made up) echoed in the response and carried by
//! the request's tracing span into every log line; request counts and latency
//! by route pattern; and GET /metrics for Prometheus — on the metrics
//! listener only (`METRICS_ADDR`), never on the public one.
//!
//! Every label value comes from a fixed set, never from what a client sent:
//! the route pattern (or `unmatched`), one of a few methods (or `other`),
//! the status we answered.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use metrics::{Counter, Histogram};
use tracing::Instrument;

use crate::state::AppState;
use crate::telemetry::{self, HTTP_DURATION, HTTP_REQUESTS, POOL_IDLE, POOL_SIZE, POOL_WAITING};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served (in its extensions).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The pattern a route was registered under ("/admin/codes/{code}"), kept in
/// its resource's app data by `http::route`: read after the call, it names the
/// route without matching the path against every pattern again.
#[derive(Clone, Copy, Debug)]
pub struct RoutePattern(pub &'static str);

fn request_id_of(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        .map(str::to_string)
        .unwrap_or_else(made_up_id)
}

/// 16 lowercase hex digits, unique within the process and unlikely to repeat
/// across processes: a per-process random start plus a counter, passed
/// through a bijection (the splitmix64 finaliser) so neighbours look unrelated.
/// No format machinery and no RNG per request.
fn made_up_id() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(rand::random::<u64>);
    let mut z = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    hex16(z)
}

fn hex16(mut n: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for slot in buf.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
    buf.iter().map(|&b| b as char).collect()
}

/// The route label: how the request was routed, `unmatched` when no route
/// took it.
enum Route {
    Static(&'static str),
    /// A service registered without `http::route` (the Swagger UI): its
    /// pattern, found by matching the path again.
    Matched(String),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Route::Static(s) => s,
            Route::Matched(s) => s,
        }
    }
}

/// The middleware: span, request id, metrics.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id_of(&req);
    let method = method_label(req.method());
    let span = tracing::info_span!("request", request_id = %id, %method, route = tracing::field::Empty);
    if !span.is_disabled() {
        // Log lines carry the route from the start; only then is it worth
        // matching the path before routing. (The pattern, never the raw path.)
        span.record("route", req.match_pattern().as_deref().unwrap_or("unmatched"));
    }
    let header = HeaderValue::from_str(&id).ok();
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(id));
    let mut res = next.call(req).instrument(span).await?;
    if let Some(value) = header {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    let route = match res.request().app_data::<RoutePattern>() {
        Some(pattern) => Route::Static(pattern.0),
        None => match res.request().match_pattern() {
            Some(pattern) => Route::Matched(pattern),
            None => Route::Static("unmatched"),
        },
    };
    record(&route, method, res.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(res)
}

/// A route's (route, method) latency histogram and its (route, method,
/// status) counter.
struct Handles {
    requests: Counter,
    duration: Histogram,
}

/// (pattern address, pattern length, method, status).
type HandlesKey = (usize, usize, &'static str, u16);

thread_local! {
    /// Metric handles per (pattern address, pattern length, method, status),
    /// per worker thread: a hit costs no label strings and no registry
    /// lookup. Bounded: patterns and methods are fixed sets, statuses are
    /// three digits.
    static HANDLES: RefCell<HashMap<HandlesKey, Handles, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

fn record(route: &Route, method: &'static str, status: u16, seconds: f64) {
    let observe = |h: &Handles| {
        h.requests.increment(1);
        h.duration.record(seconds);
    };
    if let Route::Static(pattern) = route {
        let key = (pattern.as_ptr() as usize, pattern.len(), method, status);
        let cached = HANDLES.try_with(|cache| {
            let mut cache = cache.borrow_mut();
            observe(cache.entry(key).or_insert_with(|| handles(pattern, method, status)));
        });
        if cached.is_ok() {
            return;
        }
    }
    observe(&handles(route.as_str(), method, status));
}

fn handles(route: &str, method: &'static str, status: u16) -> Handles {
    let labels = [("route", route.to_string()), ("method", method.to_string()), ("status", status.to_string())];
    Handles {
        requests: metrics::counter!(HTTP_REQUESTS, &labels),
        duration: metrics::histogram!(HTTP_DURATION, &labels[..2]),
    }
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

    #[test]
    fn made_up_ids_are_sixteen_hex_digits_and_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..100_000).map(|_| made_up_id()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
        assert_eq!(hex16(0xfedc_ba98_7654_3210), "fedcba9876543210");
        assert_eq!(hex16(1), "0000000000000001");
    }
}
