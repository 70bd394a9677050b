//! GET /healthz (the process answers) and GET /readyz (it can reach Redis and
//! Postgres, so a load balancer may send it traffic).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz)).route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (postgres, redis) = tokio::join!(state.ping_postgres(), state.gate.ping());
    let status = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let body = json!({"postgres": status(&postgres), "redis": status(&redis)});
    if postgres.is_ok() && redis.is_ok() {
        HttpResponse::Ok().json(json!({"status": "ready", "checks": body}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "error": {"code": "not_ready", "message": "a dependency is unreachable"},
            "checks": body
        }))
    }
}
