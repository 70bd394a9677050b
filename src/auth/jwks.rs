//! GET /.well-known/jwks.json: the public keys tokens are signed with, for
//! the wallet role of the split (and anyone else) to verify them. Empty in
//! the single process, whose HS256 secret is never published.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use crate::http::route;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::GET, "/.well-known/jwks.json", jwks);
}

/// The token-signing public keys (RFC 7517), by `kid`.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses(
    (status = 200, description = "the JWK set: Ed25519 keys (`kty` OKP, `crv` Ed25519) with their `kid`; \
        empty when this gateway signs with HS256", body = Object,
        example = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "kid": "b7f2c0d1e4a59f63", "use": "sig", "alg": "EdDSA"}]}))))]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header(("cache-control", "public, max-age=60")).json(state.tokens.published())
}
