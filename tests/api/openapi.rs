//! The OpenAPI spec documents exactly the routes the app serves, and the
//! Swagger UI is served by the gateway itself.

use std::collections::BTreeSet;

use crate::helpers::spawn_app;

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
