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

#[tokio::test]
async fn swagger_ui_is_served_locally() {
    let app = spawn_app().await;
    let res = app.client.get(format!("{}/docs/", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{}", &html[..html.len().min(200)]);
    assert!(!html.contains("cdn") && !html.contains("unpkg"), "assets must come from the gateway");
}
