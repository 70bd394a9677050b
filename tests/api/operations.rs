//! What operators rely on: health, readiness, metrics, request ids.

use redeem_gateway::codes::admin::CreateCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status, 200);
    let res = app.get("/readyz", None).await;
    assert_eq!((res.status.as_u16(), res.body["checks"]["postgres"].as_str()), (200, Some("ok")));
    assert_eq!(res.body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_and_redemption_outcomes() {
    let app = spawn_app().await;
    app.create(CreateCode { tracked: Some(true), ..CreateCode::credit("METRIC".into(), 10, 1) }).await;
    let users = app.create_users(2).await;
    assert_eq!(app.use_code(&users[0].1, "METRIC").await.status, 200);
    assert_eq!(app.use_code(&users[1].1, "METRIC").await.status, 410);
    assert_eq!(app.use_code(&users[1].1, "WHATEVER-TYPED").await.status, 404);
    // On the metrics listener; the public port has no /metrics.
    assert_eq!(app.get("/metrics", None).await.status, 404);
    let res = app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for needle in [
        r#"redemptions_total{code="METRIC",outcome="success"}"#,
        r#"redemptions_total{code="METRIC",outcome="sold_out"}"#,
        r#"redemptions_total{code="unknown",outcome="code_not_found"}"#,
        r#"http_requests_total{route="/codes/use",method="POST",status="200"}"#,
        "http_request_duration_seconds_bucket",
        "gate_claim_duration_seconds_bucket",
        "commit_duration_seconds_bucket",
        r#"pool_connections{pool="postgres"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(!text.contains("WHATEVER-TYPED"), "client input must never become a label");
}

/// Routes carry their pattern (http::route) and the metrics read it after
/// the call; anything else (the Swagger UI, a route of another method, no
/// route at all) is still named as before: its pattern, or `unmatched`.
#[tokio::test]
async fn route_labels_name_the_pattern_whatever_the_route() {
    let app = spawn_app().await;
    app.create_code("LABELS", 10, 1).await;
    let admin = app.admin_token();
    assert_eq!(app.get("/admin/codes/LABELS", Some(&admin)).await.status, 200);
    assert_eq!(app.get("/no/such/route-typed-here", None).await.status, 404);
    let other_method =
        app.client.delete(format!("{}/admin/codes/LABELS", app.address)).bearer_auth(&admin).send().await.unwrap();
    assert!(other_method.status().is_client_error());
    app.client.get(format!("{}/docs/", app.address)).send().await.unwrap();
    let text = app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap().text().await.unwrap();
    for needle in [
        r#"http_requests_total{route="/admin/codes/{code}",method="GET",status="200"}"#,
        r#"http_requests_total{route="unmatched",method="GET",status="404"}"#,
        &format!(
            r#"http_requests_total{{route="/admin/codes/{{code}}",method="DELETE",status="{}"}}"#,
            other_method.status().as_u16()
        ),
        r#"http_requests_total{route="/docs/{_:.*}",method="GET""#,
        r#"http_request_duration_seconds_count{route="/admin/codes/{code}",method="GET"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let leaked =
        text.lines().filter(|l| l.contains("route=")).any(|l| l.contains("typed-here") || l.contains("LABELS"));
    assert!(!leaked, "client input must never become a label:\n{text}");
}

#[tokio::test]
async fn a_request_id_is_echoed_or_made_up() {
    let app = spawn_app().await;
    let res =
        app.client.get(format!("{}/healthz", app.address)).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app.client.get(format!("{}/healthz", app.address)).send().await.unwrap();
    let made_up = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made_up.len(), 16);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let res = app.client.get(format!("{}/healthz", app.address)).send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 20, "made-up ids repeat");
    // Nonsense (or a header-injection attempt) is replaced, not echoed.
    let res = app
        .client
        .post(format!("{}/wallet/balance", app.address))
        .header("x-request-id", "bad id with spaces")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "bad id with spaces");
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn the_event_stream_pushes_the_report_as_it_changes() {
    let app = spawn_app().await;
    app.create_code("LIVE", 10, 3).await;
    let (_, token) = app.create_users(1).await.remove(0);
    let mut res = app
        .client
        .get(format!("{}/admin/codes/live/events", app.address))
        .bearer_auth(app.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let first = next_report(&mut res).await;
    assert_eq!((first["code"].as_str(), first["redeemed"].as_i64()), (Some("LIVE"), Some(0)));

    assert_eq!(app.use_code(&token, "LIVE").await.status, 200);
    let second = next_report(&mut res).await;
    assert_eq!((second["redeemed"].as_i64(), second["remaining"].as_i64()), (Some(1), Some(2)));

    // Not for plain users.
    let res = app.client.get(format!("{}/admin/codes/live/events", app.address)).bearer_auth(&token).send().await;
    assert_eq!(res.unwrap().status(), 403);
}

/// Reads the stream until the next `event: report` and returns its data.
async fn next_report(res: &mut reqwest::Response) -> serde_json::Value {
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), res.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("stream open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(event) = buffer.split("\n\n").find(|e| e.starts_with("event: report")) {
            let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            return serde_json::from_str(data).unwrap();
        }
    }
}

#[tokio::test]
async fn the_dashboard_page_is_served_without_external_assets() {
    let app = spawn_app().await;
    let res = app.client.get(format!("{}/dashboard", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("id=\"token\"") && html.contains("/admin/codes"));
    assert!(!html.contains("http://") && !html.contains("https://"), "no external assets");
}
