//! The OpenAPI spec documents exactly the routes the app serves, states the
//! limits the server enforces, and the Swagger UI is served by the gateway
//! itself.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

#[tokio::test]
async fn the_spec_lists_every_route_the_app_serves_and_no_other() {
    let app = spawn_app().await;
    let res = app.get("/openapi.json", None).await;
    assert_eq!(res.status, 200);
    let spec = res.body;
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().into_iter().flat_map(move |o| o.keys().map(move |m| (m.to_uppercase(), path.clone())))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        redeem_gateway::http::served_routes().into_iter().map(|(m, p)| (m, p.to_string())).collect();
    assert!(served.len() >= 11, "routes registered: {served:?}");
    assert_eq!(documented, served, "spec vs served routes");
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
}

/// The security schemes of an operation, by name, with their scopes.
fn schemes(op: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|req| req.as_object().into_iter().flatten())
        .map(|(name, scopes)| {
            let scopes = scopes.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from));
            (name.clone(), scopes.collect())
        })
        .collect()
}

#[tokio::test]
async fn every_route_says_which_caller_kind_may_call_it() {
    let app = spawn_app().await;
    let spec = app.get("/openapi.json", None).await.body;
    for kind in ["bearer", "admin", "service"] {
        assert!(spec["components"]["securitySchemes"][kind]["description"].is_string(), "scheme {kind}");
    }
    let mut seen = 0;
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            seen += 1;
            let description = op["description"].as_str().unwrap_or_default();
            assert!(description.starts_with("**Caller:** "), "{method} {path}: {description:?}");
            let kinds: Vec<String> = schemes(op).into_iter().map(|(k, _)| k).collect();
            assert!(kinds.len() <= 1, "{method} {path}: one caller kind, got {kinds:?}");
            let is_admin = op["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "admin"));
            assert_eq!(is_admin, kinds.first().map(String::as_str) == Some("admin"), "{method} {path}");
        }
    }
    assert!(seen > 20);
    // The service routes, with the scope each needs.
    let expected = [
        ("/coupons/redeem", "coupons:redeem"),
        ("/coupons/redemptions/{id}/cancel", "coupons:cancel"),
        ("/wallet/credits", "wallet:credit"),
        ("/wallet/debits", "wallet:debit"),
    ];
    for (path, scope) in expected {
        let op = &spec["paths"][path]["post"];
        assert_eq!(schemes(op), vec![("service".to_string(), vec![scope.to_string()])], "{path}");
        assert!(op["description"].as_str().unwrap().contains(scope), "{path}");
        assert!(op["responses"]["403"].is_object(), "{path} documents the 403 of other kinds");
    }
    // The user-facing ones stay the user's.
    for (path, method) in [("/coupons/quote", "post"), ("/wallet/transactions", "get"), ("/codes/use", "post")] {
        let kinds: Vec<String> = schemes(&spec["paths"][path][method]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["bearer"], "{path}");
    }
    let debit = &spec["components"]["schemas"]["DebitRequest"]["properties"];
    assert!(debit["voucher_id"].is_object() && debit["purchase_type"].is_object());
}

#[tokio::test]
async fn swagger_ui_is_served_locally() {
    let app = spawn_app().await;
    let res = app.client.get(format!("{}/docs/", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{}", &html[..html.len().min(200)]);
    assert!(!html.contains("cdn") && !html.contains("unpkg"), "assets must come from the gateway");
}

#[tokio::test]
async fn docs_without_the_slash_moves_to_swagger_ui() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = client.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 308, "GET /docs");
    assert_eq!(res.headers()["location"], "/docs/");
}

/// A number or a length the served spec states, by JSON pointer.
fn bound(spec: &serde_json::Value, pointer: &str) -> i64 {
    spec.pointer(pointer).and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))).unwrap_or_else(|| {
        panic!("the spec states no bound at {pointer}");
    })
}

/// The server's verdict on a body: accepted, or refused as `invalid_input`
/// (the verdict the spec's limits predict); anything else is a bug here.
async fn accepted(app: &TestApp, path: &str, body: serde_json::Value, token: Option<&str>) -> bool {
    let res = app.post(path, body.clone(), token).await;
    match (res.status.as_u16(), res.error_code()) {
        (200 | 201, _) => true,
        (422, "invalid_input") => false,
        (status, code) => panic!("POST {path} {body}: {status} {code}"),
    }
}

/// Boundary values, read from the served spec, fed to the server: a value at
/// a stated bound is accepted, one past it is refused with 422
/// `invalid_input`. So the schemas' limits and the server's validation
/// cannot drift apart unnoticed.
#[tokio::test]
async fn the_limits_the_spec_states_are_the_limits_the_server_enforces() {
    let app = spawn_app_with(&[("RATE_LIMIT_ENABLED", "false")]).await;
    let spec = app.get("/openapi.json", None).await.body;
    let admin_token = app.admin_token();
    let admin = Some(admin_token.as_str());
    let schemas = "/components/schemas";
    let mut n = 0;
    let mut name = || {
        n += 1;
        format!("B{n}")
    };

    // Code names: the pattern's length and characters.
    let max = bound(&spec, &format!("{schemas}/CodeName/maxLength")) as usize;
    let long = |len: usize, tag: &str| format!("{tag}{}", "X".repeat(len - tag.len()));
    let credit = |code: &str, amount: i64, limit: i64| json!({"code": code, "amount": amount, "limit": limit});
    assert!(accepted(&app, "/admin/codes", credit(&long(max, "A"), 1, 1), admin).await, "code of maxLength");
    assert!(!accepted(&app, "/admin/codes", credit(&long(max + 1, "B"), 1, 1), admin).await, "code past maxLength");
    assert!(!accepted(&app, "/admin/codes", credit("A B", 1, 1), admin).await, "a space breaks the pattern");

    // Amount and limit ranges.
    let create = format!("{schemas}/CreateCreditCode/properties");
    let (lo, hi) =
        (bound(&spec, &format!("{create}/amount/minimum")), bound(&spec, &format!("{create}/amount/maximum")));
    assert!(accepted(&app, "/admin/codes", credit(&name(), lo, 1), admin).await);
    assert!(accepted(&app, "/admin/codes", credit(&name(), hi, 1), admin).await);
    assert!(!accepted(&app, "/admin/codes", credit(&name(), lo - 1, 1), admin).await);
    assert!(!accepted(&app, "/admin/codes", credit(&name(), hi + 1, 1), admin).await);
    let (lo, hi) = (bound(&spec, &format!("{create}/limit/minimum")), bound(&spec, &format!("{create}/limit/maximum")));
    assert!(accepted(&app, "/admin/codes", credit(&name(), 1, hi), admin).await);
    assert!(!accepted(&app, "/admin/codes", credit(&name(), 1, lo - 1), admin).await);
    assert!(!accepted(&app, "/admin/codes", credit(&name(), 1, hi + 1), admin).await);

    // A coupon: per-user limit, percent, and the rules' list entries.
    let per_user = bound(&spec, &format!("{schemas}/CreateCouponCode/properties/per_user_limit/maximum"));
    let percent_max = bound(&spec, &format!("{schemas}/DiscountKind/oneOf/0/properties/percent/maximum"));
    let rule_len = bound(&spec, &format!("{schemas}/RuleString/maxLength")) as usize;
    let coupon = |code: String, per_user: i64, percent: i64, sku: String| {
        json!({"code": code, "kind": "coupon", "limit": 10, "per_user_limit": per_user,
               "reward": {"kind": {"type": "percent", "percent": percent}}, "rules": {"skus": [sku]}})
    };
    assert!(accepted(&app, "/admin/codes", coupon(name(), per_user, percent_max, "s".repeat(rule_len)), admin).await);
    assert!(!accepted(&app, "/admin/codes", coupon(name(), per_user + 1, 10, "s".into()), admin).await);
    assert!(!accepted(&app, "/admin/codes", coupon(name(), 1, percent_max + 1, "s".into()), admin).await);
    assert!(!accepted(&app, "/admin/codes", coupon(name(), 1, 0, "s".into()), admin).await);
    assert!(!accepted(&app, "/admin/codes", coupon(name(), 1, 10, "s".repeat(rule_len + 1)), admin).await);
    assert!(!accepted(&app, "/admin/codes", coupon(name(), 1, 10, "   ".into()), admin).await, "blank entry");

    // A voucher campaign's validity in days.
    let days = bound(&spec, &format!("{schemas}/VoucherReward/properties/valid_days/maximum"));
    let voucher = |code: String, days: i64| {
        json!({"code": code, "kind": "voucher", "limit": 10,
               "reward": {"percent": 30, "voucher_type": "mobile_topup", "valid_days": days}})
    };
    assert!(accepted(&app, "/admin/codes", voucher(name(), days), admin).await);
    assert!(!accepted(&app, "/admin/codes", voucher(name(), days + 1), admin).await);

    // Registration: username and password lengths.
    let register = format!("{schemas}/RegisterRequest/properties");
    let (umin, umax) = (
        bound(&spec, &format!("{register}/username/minLength")),
        bound(&spec, &format!("{register}/username/maxLength")),
    );
    let (pmin, pmax) = (
        bound(&spec, &format!("{register}/password/minLength")),
        bound(&spec, &format!("{register}/password/maxLength")),
    );
    let user = |u: String, p: usize| json!({"username": u, "password": "p".repeat(p)});
    assert!(accepted(&app, "/auth/register", user("u".repeat(umin as usize), pmin as usize), None).await);
    assert!(accepted(&app, "/auth/register", user("v".repeat(umax as usize), pmax as usize), None).await);
    assert!(!accepted(&app, "/auth/register", user("w".repeat(umin as usize - 1), 10), None).await);
    assert!(!accepted(&app, "/auth/register", user("x".repeat(umax as usize + 1), 10), None).await);
    assert!(!accepted(&app, "/auth/register", user("shortpass".into(), pmin as usize - 1), None).await);
    assert!(!accepted(&app, "/auth/register", user("longpass".into(), pmax as usize + 1), None).await);
    assert!(
        !accepted(&app, "/auth/register", json!({"username": "semi;colon", "password": "p".repeat(10)}), None).await
    );

    // Page sizes.
    let users = app.create_users(1).await;
    let user_token = &users[0].1;
    let param_max = |path: &str| {
        let params = spec["paths"][path]["get"]["parameters"].as_array().cloned().unwrap_or_default();
        let limit = params.iter().find(|p| p["name"] == "limit").cloned().unwrap_or_default();
        limit["schema"]["maximum"].as_i64().unwrap_or_else(|| panic!("{path}: no maximum for limit"))
    };
    for (path, token) in [("/wallet/transactions", user_token.as_str()), ("/admin/codes", admin_token.as_str())] {
        let max = param_max(path);
        assert_eq!(app.get(&format!("{path}?limit={max}"), Some(token)).await.status, 200, "{path} limit={max}");
        let past = app.get(&format!("{path}?limit={}", max + 1), Some(token)).await;
        assert_eq!((past.status.as_u16(), past.error_code()), (422, "invalid_input"), "{path} limit={}", max + 1);
        let zero = app.get(&format!("{path}?limit=0"), Some(token)).await;
        assert_eq!(zero.status, 422, "{path} limit=0");
    }
}
