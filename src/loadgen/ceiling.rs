//! The HTTP ceiling: a trivial actix-web server that parses the same JSON body
//! as `POST /codes/use` and answers the same 410 `sold_out` error, with no
//! auth, Redis or Postgres. Whatever the gateway does beyond this costs time.

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;

#[derive(Deserialize)]
struct UseCode {
    code: String,
}

async fn sold_out(body: web::Json<UseCode>) -> HttpResponse {
    let message = if body.code.is_empty() { "no such code" } else { "this code has been fully redeemed" };
    HttpResponse::Gone().json(serde_json::json!({ "error": { "code": "sold_out", "message": message } }))
}

/// Serves `POST /codes/use` on `addr` with `workers` actix workers until stopped.
pub async fn serve(addr: &str, workers: usize) -> std::io::Result<()> {
    HttpServer::new(|| App::new().route("/codes/use", web::post().to(sold_out)))
        .workers(workers.max(1))
        .backlog(4096)
        .bind(addr)?
        .run()
        .await
}
