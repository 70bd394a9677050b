//! What a stranger can reach: the public listener serves no metrics and no
//! client input becomes a label; the example secret never serves on a
//! public address; a gzip bomb is refused without inflating it; a login
//! storm cannot hold up a real login past a stated bound; live streams are
//! capped and end with their token; `/readyz` names a failed dependency,
//! never its error text; slow bodies and idle connections are bounded.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redeem_gateway::auth::Role;
use redeem_gateway::codes::admin::CreateCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

async fn scrape(app: &TestApp) -> String {
    let res = app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// Metric series (non-comment lines) in a scrape that an odd method could
/// have made. (The recorder is one per process, and tests running beside
/// this one add series of their own routes.)
fn odd_method_series(text: &str) -> usize {
    let standard = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"].map(|m| format!("method=\"{m}\""));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains("method="))
        .filter(|l| !standard.iter().any(|m| l.contains(m.as_str())))
        .count()
}

#[tokio::test]
async fn an_anonymous_scrape_of_the_public_port_names_no_code() {
    let app = spawn_app().await;
    app.create(CreateCode { tracked: Some(true), ..CreateCode::credit("PUBLIC-PROMO".into(), 10, 5) }).await;
    app.create_code("VIP-PRIVATE-77", 10, 1000).await;
    let bulk = app
        .post("/admin/codes/bulk", json!({"prefix": "GIFT", "count": 3, "amount": 10}), Some(&app.admin_token()))
        .await;
    assert_eq!(bulk.status, 201);
    let gift = bulk.body.as_str().unwrap().lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    let users = app.create_users(3).await;
    for code in ["PUBLIC-PROMO", "VIP-PRIVATE-77", gift.as_str()] {
        assert_eq!(app.use_code(&users[0].1, code).await.status, 200, "{code}");
    }

    // The public port: /metrics is an unknown route there.
    let res = app.get("/metrics", None).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (404, "not_found"));
    // No anonymous route on the public port names a code.
    for path in ["/metrics", "/healthz", "/readyz", "/openapi.json", "/dashboard", "/docs/", "/nope"] {
        let text = app.client.get(format!("{}{path}", app.address)).send().await.unwrap().text().await.unwrap();
        for code in ["PUBLIC-PROMO", "VIP-PRIVATE-77", gift.as_str()] {
            assert!(!text.contains(code), "{path} names {code}");
        }
    }

    // The metrics listener: only the code an operator marked tracked has its own series.
    let text = scrape(&app).await;
    // (One recorder per process: other tests add to `untracked` too.)
    assert!(text.contains(r#"redemptions_total{code="PUBLIC-PROMO",outcome="success"} 1"#), "{text}");
    assert!(text.contains(r#"redemptions_total{code="untracked",outcome="success"}"#), "{text}");
    assert!(!text.contains("VIP-PRIVATE-77") && !text.contains(&gift), "untracked names leaked:\n{text}");
    // And it serves nothing else.
    let res = app.client.get(format!("{}/healthz", app.metrics_address)).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn bulk_codes_are_never_tracked_and_tracking_is_an_operator_switch() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let res = app
        .post("/admin/codes/bulk", json!({"prefix": "BULK", "count": 2, "amount": 10, "tracked": true}), Some(&admin))
        .await;
    assert_eq!((res.status.as_u16(), res.error_code()), (422, "invalid_input"));
    let res = app.post("/admin/codes/bulk", json!({"prefix": "BULK", "count": 2, "amount": 10}), Some(&admin)).await;
    let one = res.body.as_str().unwrap().lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    let patch = app
        .request(reqwest::Method::PATCH, &format!("/admin/codes/{one}"), Some(json!({"tracked": true})), Some(&admin))
        .await;
    assert_eq!((patch.status.as_u16(), patch.error_code()), (422, "invalid_input"));

    // An ordinary code: off by default, on by PATCH.
    let res = app.post("/admin/codes", json!({"code": "SWITCH", "amount": 5, "limit": 10}), Some(&admin)).await;
    assert_eq!((res.status.as_u16(), res.body["tracked"].as_bool()), (201, Some(false)));
    let patch =
        app.request(reqwest::Method::PATCH, "/admin/codes/switch", Some(json!({"tracked": true})), Some(&admin)).await;
    assert_eq!((patch.status.as_u16(), patch.body["tracked"].as_bool()), (200, Some(true)));
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "SWITCH").await.status, 200);
    assert!(scrape(&app).await.contains(r#"redemptions_total{code="SWITCH",outcome="success"} 1"#));
}

fn random_method() -> reqwest::Method {
    let name: String = (0..4000).map(|_| (b'A' + rand::random::<u8>() % 26) as char).collect();
    reqwest::Method::from_bytes(name.as_bytes()).unwrap()
}

#[tokio::test]
async fn random_methods_leave_the_series_count_flat() {
    let app = spawn_app().await;
    // The first odd method creates the `other` series; after that, nothing new.
    for _ in 0..3 {
        app.client.request(random_method(), format!("{}/healthz", app.address)).send().await.unwrap();
    }
    let before = scrape(&app).await;
    for _ in 0..50 {
        let res = app.client.request(random_method(), format!("{}/healthz", app.address)).send().await.unwrap();
        assert_eq!(res.status(), 404);
    }
    let after = scrape(&app).await;
    assert_eq!(odd_method_series(&after), odd_method_series(&before), "new series from random methods");
    assert!(after.contains(r#"method="other""#));
    assert!(after.lines().all(|l| l.len() < 400), "a label carries client input");
}

// ---- the gateway binary, run as a stranger would meet it ----

const BIN: &str = env!("CARGO_BIN_EXE_redeem-gateway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the binary with exactly `vars` (no inherited environment, no .env).
fn gateway(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    let dir = std::env::temp_dir();
    cmd.env_clear().current_dir(dir).env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn the_example_secret_on_a_public_address_refuses_to_start() {
    use redeem_gateway::config::EXAMPLE_JWT_SECRET;
    for (app_env, addr, secret) in [
        ("dev", "0.0.0.0:0", EXAMPLE_JWT_SECRET),
        ("production", "0.0.0.0:0", EXAMPLE_JWT_SECRET),
        ("dev", "[::]:0", EXAMPLE_JWT_SECRET),
        ("dev", "0.0.0.0:0", "short-secret-of-31-bytes-abcdef"),
        ("production", "127.0.0.1:0", EXAMPLE_JWT_SECRET),
    ] {
        let out = gateway(&[
            ("APP_ENV", app_env),
            ("HTTP_ADDR", addr),
            ("JWT_SECRET", secret),
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("REDIS_URL", "redis://127.0.0.1:1/"),
        ])
        .arg("serve")
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{app_env} {addr}: {stderr}");
        assert!(stderr.contains("JWT_SECRET") && stderr.contains("openssl rand"), "{stderr}");
    }
}

/// VmHWM (peak resident memory) of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// POSTs `body` as one chunk of a chunked request (no Content-Length, so
/// only the inflated size can be judged); returns the status line.
async fn post_chunked_gzip(port: u16, path: &str, token: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    // The server may answer and close before the bomb is all sent: ignore write errors.
    let _ = s.write_all(head.as_bytes()).await;
    for part in body.chunks(16 * 1024) {
        let _ = s.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await;
        let _ = s.write_all(part).await;
        let _ = s.write_all(b"\r\n").await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_with_memory_flat() {
    let app = spawn_app().await; // for a database and a token the binary accepts
    let (_, token) = app.create_users(1).await.remove(0);
    let port = free_port();
    let mut child = gateway(&[
        ("APP_ENV", "dev"),
        ("HTTP_ADDR", format!("127.0.0.1:{port}").as_str()),
        ("HTTP_WORKERS", "2"),
        ("METRICS_ADDR", "off"),
        ("JWT_SECRET", crate::helpers::SECRET),
        ("DATABASE_URL", app.state.config.database_url.as_str()),
        ("REDIS_URL", app.redis_url.as_str()),
        ("REDIS_KEY_PREFIX", app.prefix.as_str()),
        ("RECONCILE_INTERVAL_SECONDS", "3600"),
        ("RATE_LIMIT_ENABLED", "false"),
        ("RUST_LOG", "error"),
    ])
    .arg("serve")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bomb = gzip(&vec![b' '; 64 << 20]); // 64 MiB of JSON whitespace, ~64 KiB on the wire
                                            // A small bomb fits under the body limit compressed: only inflation can tell.
    let small_bomb = gzip(&vec![b' '; 12 << 20]);
    assert!(small_bomb.len() < 16_384, "{}", small_bomb.len());

    // Warm up (a normal gzip request), then note the peak.
    let status = post_chunked_gzip(port, "/codes/use", &token, &gzip(br#"{"code":"NONE"}"#)).await;
    assert!(status.contains(" 404 "), "{status}");
    let before = peak_kib(child.id());
    let mut tasks = vec![];
    for i in 0..24 {
        let body = if i % 2 == 0 { bomb.clone() } else { small_bomb.clone() };
        let token = token.clone();
        tasks.push(tokio::spawn(async move { post_chunked_gzip(port, "/codes/use", &token, &body).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let status = t.await.unwrap();
        if i % 2 == 1 {
            // Sent whole (12 KiB): the answer is read in full.
            assert!(status.contains(" 413 "), "{status}");
        } else {
            // Cut off mid-send: a 413, or a reset before the client read it.
            assert!(status.contains(" 413 ") || status.is_empty(), "{status}");
        }
    }
    // With Content-Length too: refused before reading.
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/codes/use"))
        .bearer_auth(&token)
        .header("content-encoding", "gzip")
        .body(bomb.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let after = peak_kib(child.id());
    eprintln!("gzip bombs: peak memory {before} KiB before, {after} KiB after");
    let _ = child.kill();
    let _ = child.wait();
    // 24 bombs of 64 MiB and 12 MiB inflated whole would need gigabytes; each is
    // cut off at the 16 KiB limit, so the peak barely moves.
    assert!(after - before < 16 * 1024, "peak memory grew by {} KiB (from {before} KiB)", after - before);
}

// ---- bounded work per stranger ----

/// A user who can really log in (one real argon2id hash, through the API).
async fn register(app: &TestApp, name: &str, password: &str) {
    let res = app.post("/auth/register", json!({"username": name, "password": password}), None).await;
    assert_eq!(res.status, 201, "{:?}", res.body);
}

#[tokio::test]
async fn registration_checks_the_name_before_hashing() {
    let app = spawn_app().await;
    register(&app, "sam", "a-long-password").await;
    let hashed = app.state.hashing.admitted();
    for body in [
        json!({"username": "sam", "password": "another-password"}),
        json!({"username": "SAM", "password": "another-password"}),
        json!({"username": "no spaces", "password": "another-password"}),
        json!({"username": "fine_name", "password": "short"}),
    ] {
        let res = app.post("/auth/register", body, None).await;
        assert!([409, 422].contains(&res.status.as_u16()), "{:?}", res.body);
    }
    assert_eq!(app.state.hashing.admitted(), hashed, "a refused registration cost a password hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_storm_from_many_addresses_does_not_hold_up_a_real_login() {
    // A long wait limit, so that on a loaded machine the real login is measured
    // rather than cut off: the bound is counted in hashes, which load does not change.
    let app =
        spawn_app_with(&[("TRUSTED_PROXY_HEADER", "x-forwarded-for"), ("HASH_QUEUE", "64"), ("HASH_WAIT_MS", "60000")])
            .await;
    register(&app, "real_user", "the-real-password").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut storm = vec![];
    // 20 addresses x 8 at a time: 160 hashes wanted at once, more than the queue holds.
    for a in 0..20 {
        for _ in 0..8 {
            let (client, url, stop) = (app.client.clone(), format!("{}/auth/login", app.address), stop.clone());
            storm.push(tokio::spawn(async move {
                let (mut n, mut refused, mut without_retry_after) = (0, 0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("bot{:08x}", rand::random::<u32>());
                    let res = client
                        .post(&url)
                        .header("x-forwarded-for", format!("203.0.113.{a}"))
                        .json(&json!({"username": name, "password": "guess-guess"}))
                        .send()
                        .await
                        .unwrap();
                    n += 1;
                    if res.status() == 503 {
                        refused += 1;
                        without_retry_after += usize::from(res.headers().get("retry-after").is_none());
                    }
                }
                (n, refused, without_retry_after)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.state.hashing.load().1 > 32, "the storm fills the queue: {:?}", app.state.hashing.load());
    let (mut latencies, mut hashes_ahead) = (vec![], vec![]);
    let storm_started = (Instant::now(), app.state.hashing.admitted());
    for _ in 0..5 {
        let started = Instant::now();
        let admitted = app.state.hashing.admitted();
        let res = app
            .client
            .post(format!("{}/auth/login", app.address))
            .header("x-forwarded-for", "198.51.100.7")
            .json(&json!({"username": "real_user", "password": "the-real-password"}))
            .send()
            .await
            .unwrap();
        latencies.push(started.elapsed());
        // Hashes that ran while it waited, its own not counted.
        hashes_ahead.push(app.state.hashing.admitted() - admitted - 1);
        assert_eq!(res.status(), 200, "the real login is served during the storm");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut refused, mut without) = (0, 0, 0);
    for t in storm {
        let (n, r, w) = t.await.unwrap();
        total += n;
        refused += r;
        without += w;
    }
    let per_hash = storm_started.0.elapsed() / (app.state.hashing.admitted() - storm_started.1).max(1) as u32;
    eprintln!(
        "login storm: {total} storm logins, {refused} refused with 503; one hash every {per_hash:?}; \
         real logins took {latencies:?} with {hashes_ahead:?} hashes run ahead of them"
    );
    assert!(refused > 0 && without == 0, "a full queue answers 503 with Retry-After ({refused}, {without})");
    // The bound: one hash per other address waiting (20), plus those that run
    // beside it on the other CPU and during its trip to the queue (a handful):
    // at most 30 — where first come, first served would put the 64 hashes
    // already waiting ahead of it. In time: that many hashes / CPUs.
    let worst = hashes_ahead.iter().max().copied().unwrap_or_default();
    assert!(worst <= 30, "a real login waited for {worst} other hashes: {hashes_ahead:?}");
}

/// Reads an SSE response until it ends (Ok) or `within` passes (Err).
async fn read_until_end(mut res: reqwest::Response, within: Duration) -> Result<(), ()> {
    tokio::time::timeout(within, async { while let Ok(Some(_)) = res.chunk().await {} }).await.map_err(|_| ())
}

async fn open_stream(app: &TestApp, token: &str) -> reqwest::Response {
    app.client.get(format!("{}/admin/codes/capped/events", app.address)).bearer_auth(token).send().await.unwrap()
}

#[tokio::test]
async fn live_streams_are_capped_per_admin_and_in_all() {
    let app = spawn_app_with(&[("SSE_STREAMS_PER_ADMIN", "2"), ("SSE_STREAMS_TOTAL", "3")]).await;
    app.create_code("CAPPED", 10, 5).await;
    let a = app.state.tokens.issue(1_000_000_001, Role::Admin).unwrap();
    let b = app.state.tokens.issue(1_000_000_002, Role::Admin).unwrap();
    let a1 = open_stream(&app, &a).await;
    let a2 = open_stream(&app, &a).await;
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    let a3 = open_stream(&app, &a).await;
    assert_eq!(a3.status(), 429);
    assert!(a3.headers().get("retry-after").is_some());
    let body: serde_json::Value = a3.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    let b1 = open_stream(&app, &b).await;
    assert_eq!(b1.status(), 200, "another admin has places of their own");
    assert_eq!(open_stream(&app, &b).await.status(), 429, "but the gateway's total is reached");
    // A stream the client closes gives its place back.
    drop(a1);
    let started = Instant::now();
    loop {
        let again = open_stream(&app, &b).await;
        if again.status() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the closed stream's place never came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop((a2, b1));
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_or_its_admin_is_disabled() {
    let app = spawn_app_with(&[("JWT_TTL_SECONDS", "2"), ("JWT_LEEWAY_SECONDS", "0")]).await;
    app.create_code("CAPPED", 10, 5).await;
    let started = Instant::now();
    let res = open_stream(&app, &app.admin_token()).await;
    assert_eq!(res.status(), 200);
    assert!(read_until_end(res, Duration::from_secs(6)).await.is_ok(), "the stream outlived its token");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(app.state.streams.open(), 0);

    let app = spawn_app().await;
    app.create_code("CAPPED", 10, 5).await;
    let (admin_id, _) = app.create_users(1).await.remove(0);
    let doomed = app.state.tokens.issue(admin_id, Role::Admin).unwrap();
    let res = open_stream(&app, &doomed).await;
    assert_eq!(res.status(), 200);
    let off = app.post(&format!("/admin/users/{admin_id}/disable"), json!({}), Some(&app.admin_token())).await;
    assert_eq!(off.status, 200);
    assert!(read_until_end(res, Duration::from_secs(3)).await.is_ok(), "a disabled admin's stream went on");
}

#[tokio::test]
async fn readiness_names_the_failed_dependency_not_its_error() {
    let app = spawn_app().await;
    let (admin, conn) = tokio_postgres::connect(&app.server_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", app.database)).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[&app.database])
        .await
        .unwrap();
    let res = app.get("/readyz", None).await;
    admin.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", app.database)).await.unwrap();
    assert_eq!(res.status, 503);
    assert_eq!(
        (res.body["checks"]["postgres"].as_str(), res.body["checks"]["redis"].as_str()),
        (Some("unavailable"), Some("ok"))
    );
    let text = res.body.to_string();
    for leak in ["127.0.0.1", "postgres:", "terminat", "connection", &app.database] {
        assert!(!text.contains(leak), "readyz shows {leak:?}: {text}");
    }
}

/// Sends `raw` (a head and maybe part of its body, never all of it) to a
/// gateway whose body deadline is 500 ms; its answer, and how long it took.
async fn answer_to_a_body_that_never_completes(raw: &[u8]) -> (String, Duration) {
    let app = spawn_app_with(&[("BODY_READ_TIMEOUT_MS", "500")]).await;
    let port = app.address.rsplit(':').next().unwrap().to_string();
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    s.write_all(raw).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer)).await.unwrap().unwrap();
    (String::from_utf8_lossy(&answer[..n]).into_owned(), started.elapsed())
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off() {
    let (answer, took) = answer_to_a_body_that_never_completes(
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"));
    assert!(took < Duration::from_secs(2));
}

/// The body's timer is armed only when a second look finds the body still
/// missing (http::body): a head whose body never starts must reach it too.
#[tokio::test]
async fn a_body_that_never_starts_is_cut_off() {
    let (answer, took) = answer_to_a_body_that_never_completes(
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"));
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(2));
}

/// A body sent in two writes, the second well after the head, is read whole
/// (the timer is armed only then, and does not fire early).
#[tokio::test]
async fn a_body_in_two_late_pieces_is_read_whole() {
    let app = spawn_app_with(&[("BODY_READ_TIMEOUT_MS", "2000")]).await;
    let port = app.address.rsplit(':').next().unwrap().to_string();
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let body = br#"{"username":"nobody-here","password":"not-the-password"}"#;
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&body[10..]).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("invalid_credentials"), "{answer}");
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS", "4"), ("CLIENT_REQUEST_TIMEOUT_MS", "60000")]).await;
    let port = app.address.rsplit(':').next().unwrap().to_string();
    // Four slow-loris connections: half a request head each, never finished.
    let mut loris = vec![];
    for _ in 0..4 {
        let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        loris.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().unwrap();
    assert!(client.get(format!("{}/healthz", app.address)).send().await.is_err(), "served past the cap");
    drop(loris);
    let res = reqwest::Client::new().get(format!("{}/healthz", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
}
