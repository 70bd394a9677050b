//! GET /healthz (the process answers) and GET /readyz (it can reach Redis and
//! Postgres, so a load balancer may send it traffic). Both are public, so
//! they say which dependency failed and nothing more: the error text (hosts,
//! ports, user names) goes to the log.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::route;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::GET, "/healthz", healthz);
    route(cfg, Method::GET, "/readyz", readyz);
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: Postgres and Redis both answer, and the disabled users are
/// loaded. The split's wallet role checks its own Postgres only.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready", body = Object,
        example = json!({"status": "ready", "checks": {"postgres": "ok", "redis": "ok", "disabled_users": "ok"}})),
    (status = 503, description = "a dependency is unreachable, or the disabled users are not loaded yet: `checks` names it (\"unavailable\"), the reason is logged",
        body = Object, example = json!({"error": {"code": "not_ready", "message": "a dependency is unreachable"},
            "checks": {"postgres": "unavailable", "redis": "ok", "disabled_users": "ok"}}))))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // The wallet role needs its own database only; the redemption side
    // also Redis (the gate). Neither waits on the other service: the
    // redemption role answers while the wallet is down (credits pend).
    let uses_redis = state.config.role.redeems();
    let redis_check = async {
        if uses_redis {
            state.gate.ping().await
        } else {
            Ok(())
        }
    };
    let (postgres, redis) = tokio::join!(state.ping_postgres(), redis_check);
    for (name, result) in [("postgres", &postgres), ("redis", &redis)] {
        if let Err(e) = result {
            tracing::warn!(dependency = name, error = %e, "not ready");
        }
    }
    let status = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(_) => json!("unavailable"),
    };
    let loaded = state.disabled_users.is_loaded();
    let body = json!({
        "postgres": status(&postgres),
        "redis": if uses_redis { status(&redis) } else { json!("not used") },
        "disabled_users": if loaded { "ok" } else { "not loaded yet" },
    });
    if postgres.is_ok() && redis.is_ok() && loaded {
        HttpResponse::Ok().json(json!({"status": "ready", "checks": body}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "error": {"code": "not_ready", "message": "a dependency is unreachable, or the disabled users are not loaded yet"},
            "checks": body
        }))
    }
}
