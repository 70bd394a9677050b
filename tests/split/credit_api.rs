//! The wallet role's credit API refuses every caller but a service holding
//! `wallet:credit` under the issuer's published key: a user's token, an
//! admin's, a forged one (another Ed25519 key under the real kid), an HS256
//! one signed with a shared secret, one naming an unknown kid. Nothing is credited.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redeem_gateway::auth::{Role, Scope};
use serde_json::json;

use crate::harness::SECRET;
use crate::setup::Split;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_admin_and_forged_tokens_on_the_credit_api_credit_nothing() {
    let split = Split::start(false).await;
    let keys = split.keys();
    let url = format!("http://127.0.0.1:{}/wallet/credits", split.wallet_port);
    let body = json!({"user_id": 7, "amount": 1000, "reference": "forged-1", "reason": "free money"});
    let client = reqwest::Client::new();
    let kid = jsonwebtoken::decode_header(keys.issue(1, Role::User).unwrap()).unwrap().kid.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let service_claims = json!({"sub": "service:topup", "kind": "service", "scope": "wallet:credit",
        "iss": "redeem-gateway", "aud": "redeem-gateway:services", "iat": now, "exp": now + 600});

    // Another Ed25519 key, signing under the real kid.
    let other =
        redeem_gateway::auth::keys::signing_key_from_pem(&redeem_gateway::auth::keys::generate_pem(), None).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.clone());
    let forged = jsonwebtoken::encode(&header, &service_claims, &other.encoding).unwrap();
    let mut unknown_kid = Header::new(Algorithm::EdDSA);
    unknown_kid.kid = Some("not-a-published-kid".into());
    let unknown = jsonwebtoken::encode(&unknown_kid, &service_claims, &other.encoding).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(&hs, &service_claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();

    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        ("a user's token", Some(keys.issue(7, Role::User).unwrap()), 403),
        ("an admin's token", Some(keys.issue(1, Role::Admin).unwrap()), 403),
        ("a service without wallet:credit", Some(split.credit_service_token(&[Scope::WalletDebit])), 403),
        ("forged: another key under the real kid", Some(forged), 401),
        ("an unknown kid", Some(unknown), 401),
        ("HS256 with a shared secret", Some(hs256), 401),
        ("garbage", Some("not.a.token".into()), 401),
    ];
    for (name, token, status) in cases {
        let mut req = client.post(&url).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{name}");
        let err: serde_json::Value = res.json().await.unwrap();
        assert!(err["error"]["code"].is_string(), "{name}: {err}");
    }
    let wdb = split.wallet_db().await;
    let rows: i64 = wdb.query_one("SELECT count(*) FROM ledger", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "nothing credited");

    // The control: the same call with a real service token is applied, once.
    let good = split.credit_service_token(&[Scope::WalletCredit]);
    for replayed in [false, true] {
        let res = client.post(&url).bearer_auth(&good).json(&body).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let done: serde_json::Value = res.json().await.unwrap();
        assert_eq!(done["replayed"], replayed, "{done}");
    }
    let rows: i64 = wdb.query_one("SELECT count(*) FROM ledger", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1);
    // The wallet role serves no redemption routes, and the redemption role no wallet ones.
    let res = client.post(format!("http://127.0.0.1:{}/codes/use", split.wallet_port)).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = client.post(format!("{}/wallet/credits", split.redemption.address())).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
}
