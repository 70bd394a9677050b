//! The workload: concurrent clients over every gateway, on several codes of
//! every kind at once, plus an operator pausing, resuming, ending and
//! changing limits. Each client draws its operations from its own seeded RNG,
//! so a seed fixes the schedule (the interleaving of real processes is not
//! fixed; what each client asks for, and when, is).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::cluster::{SimUser, PASSWORD};
use crate::history::{error_code, Answer, Event, History, Kind, OPERATOR};

/// Attempts of one operation before a client gives up (it retries on 503 and
/// on no answer, on a gateway drawn afresh each time).
pub const MAX_ATTEMPTS: usize = 10;
/// Marks the voucher commits and coupon orders in PostgreSQL traffic, so the
/// proxy can cut a connection right after one was sent.
pub const VOUCHER_TYPE: &str = "sim_topup";
pub const ORDER_PREFIX: &str = "SIMORD";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    Credit,
    Voucher,
    Coupon,
}

#[derive(Debug, Clone)]
pub struct SimCode {
    pub name: String,
    pub kind: CodeKind,
    pub limit: i64,
    pub amount: i64,
    pub per_user: i64,
}

/// The codes of a run: three of each kind, limits drawn from the seed.
pub fn plan_codes(rng: &mut StdRng) -> Vec<SimCode> {
    let mut codes = Vec::new();
    for (kind, tag) in [(CodeKind::Credit, "CR"), (CodeKind::Voucher, "VO"), (CodeKind::Coupon, "CP")] {
        for i in 0..3 {
            codes.push(SimCode {
                name: format!("SIM{tag}{i}"),
                kind,
                limit: rng.gen_range(30..=150),
                amount: if kind == CodeKind::Credit { 1000 * rng.gen_range(1..=9) } else { 0 },
                per_user: if kind == CodeKind::Coupon { 2 } else { 1 },
            });
        }
    }
    codes
}

pub fn create_body(c: &SimCode) -> Value {
    match c.kind {
        CodeKind::Credit => json!({"code": c.name, "kind": "credit", "amount": c.amount, "limit": c.limit}),
        CodeKind::Voucher => json!({"code": c.name, "kind": "voucher", "limit": c.limit,
            "reward": {"percent": 30, "max_amount": 50000, "voucher_type": VOUCHER_TYPE, "valid_days": 30}}),
        CodeKind::Coupon => json!({"code": c.name, "kind": "coupon", "limit": c.limit, "per_user_limit": c.per_user,
            "reward": {"kind": {"type": "percent", "percent": 10}, "max_discount": 50000}}),
    }
}

pub fn order_body(code: &str, number: &str, rng: &mut StdRng) -> Value {
    let price = 10_000 * rng.gen_range(1..=20);
    json!({"code": code, "order": {"number": number, "payment_method": "card",
        "lines": [{"sku": "SKU-1", "category": "mobile", "unit_price": price, "quantity": 1}]}})
}

/// The checkout's redeem: the quote's body, naming the user.
pub fn redeem_body(quote: &Value, user: i64) -> Value {
    let mut body = quote.clone();
    body["user_id"] = json!(user);
    body
}

/// Shared by every client of a run.
pub struct World {
    pub http: reqwest::Client,
    pub gateways: Vec<String>,
    pub codes: Vec<SimCode>,
    pub users: Vec<SimUser>,
    pub admin: String,
    /// The checkout service's token: coupon redeems and cancels are its calls.
    pub checkout: String,
    pub history: Arc<History>,
    pub next_op: AtomicU64,
    /// The limit each code was last answered with (for the operator's changes).
    pub limits: Mutex<Vec<i64>>,
    pub run_tag: String,
}

pub struct Request {
    pub kind: Kind,
    pub method: reqwest::Method,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Value>,
    pub code: Option<String>,
    pub user: Option<i64>,
    pub order: Option<String>,
    /// The use a request acts on (a cancel), recorded with it.
    pub id: Option<i64>,
}

impl World {
    pub fn new_op(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    /// One attempt, recorded.
    pub async fn attempt(&self, op: u64, client: usize, gateway: usize, r: &Request) -> (Answer, Value) {
        let start = Utc::now();
        let url = format!("{}{}", self.gateways[gateway], r.path);
        let mut req = self.http.request(r.method.clone(), url);
        if let Some(t) = &r.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &r.body {
            req = req.json(b);
        }
        let (answer, body) = match req.send().await {
            Err(e) => {
                (Answer::Unanswered(if e.is_timeout() { "timeout".into() } else { "connection".into() }), Value::Null)
            }
            Ok(res) => {
                let status = res.status().as_u16();
                match res.bytes().await {
                    Err(_) => (Answer::Unanswered("body cut".into()), Value::Null),
                    Ok(bytes) => {
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        (classify(r.kind, status, &body), body)
                    }
                }
            }
        };
        let (id, value) = extract(r.kind, &answer, &body);
        let id = id.or(r.id);
        self.history.record(Event {
            seq: 0,
            op,
            client,
            kind: r.kind,
            gateway,
            code: r.code.clone(),
            user: r.user,
            order: r.order.clone(),
            start,
            end: Utc::now(),
            answer: answer.clone(),
            id,
            value,
        });
        (answer, body)
    }

    /// Attempts until an answer that is not "try again" (or the attempts run out).
    pub async fn until_final(&self, client: usize, rng: &mut StdRng, r: &Request) -> (Answer, Value) {
        let op = self.new_op();
        let mut last = (Answer::Unanswered("never sent".into()), Value::Null);
        for _ in 0..MAX_ATTEMPTS {
            let gw = rng.gen_range(0..self.gateways.len());
            last = self.attempt(op, client, gw, r).await;
            match last.0 {
                Answer::TryAgain | Answer::Unanswered(_) | Answer::Other(429 | 500..=599, _) => {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
                }
                _ => break,
            }
        }
        last
    }
}

fn classify(kind: Kind, status: u16, body: &Value) -> Answer {
    let code = error_code(body);
    if kind == Kind::VoucherLogin && status == 200 {
        if body["voucher"]["issued"] == true {
            return Answer::Ok;
        }
        return match body["voucher"]["reason"].as_str().unwrap_or("") {
            "already_issued" if body["voucher"]["voucher"]["id"].is_i64() => Answer::AlreadyWithUse,
            "already_issued" => Answer::Already,
            "campaign_full" => Answer::SoldOut,
            "not_active" => Answer::NotEligible,
            "try_again" => Answer::TryAgain,
            other => Answer::Other(404, other.to_string()),
        };
    }
    match (status, code.as_str()) {
        (200 | 201, _) => Answer::Ok,
        (409, "already_redeemed") => Answer::Already,
        (410, _) => Answer::SoldOut,
        (422, "not_eligible") => Answer::NotEligible,
        (503, _) => Answer::TryAgain,
        (s, c) => Answer::Other(s, c.to_string()),
    }
}

fn extract(kind: Kind, answer: &Answer, body: &Value) -> (Option<i64>, Option<i64>) {
    if *answer == Answer::AlreadyWithUse {
        return (body["voucher"]["voucher"]["id"].as_i64(), None);
    }
    if *answer != Answer::Ok {
        return (None, None);
    }
    match kind {
        Kind::VoucherLogin => (body["voucher"]["voucher"]["id"].as_i64(), None),
        Kind::CouponRedeem => (body["redemption_id"].as_i64(), body["discount"].as_i64()),
        Kind::CreditUse => (None, body["balance"].as_i64()),
        Kind::Balance => (None, body["balance"].as_i64()),
        Kind::RaiseLimit | Kind::LowerLimit | Kind::Pause | Kind::Resume | Kind::End => (None, body["limit"].as_i64()),
        _ => (None, None),
    }
}

fn post(kind: Kind, path: &str, token: &str, body: Value) -> Request {
    Request {
        kind,
        method: reqwest::Method::POST,
        path: path.to_string(),
        token: Some(token.to_string()),
        body: if body.is_null() { None } else { Some(body) },
        code: None,
        user: None,
        order: None,
        id: None,
    }
}

/// One client: draws operations from its RNG until the deadline.
pub async fn client(world: Arc<World>, id: usize, seed: u64, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(id as u64 + 1)));
    let mut orders = 0usize;
    while Instant::now() < deadline {
        let roll = rng.gen_range(0..100);
        let user = world.users[rng.gen_range(0..world.users.len())].clone();
        match roll {
            0..=32 => credit_use(&world, id, &mut rng, &user).await,
            33..=37 => {
                // The same user twice at once on one code: one use at most.
                let code = pick(&world, &mut rng, CodeKind::Credit);
                let (mut r1, mut r2) = (fork(&mut rng), fork(&mut rng));
                let (w1, w2) = (world.clone(), world.clone());
                let (u1, u2) = (user.clone(), user.clone());
                let (c1, c2) = (code.clone(), code);
                let a = tokio::spawn(async move { redeem_credit(&w1, id, &mut r1, &u1, &c1).await });
                let b = tokio::spawn(async move { redeem_credit(&w2, id, &mut r2, &u2, &c2).await });
                let _ = (a.await, b.await);
            }
            38..=52 => {
                let code = pick(&world, &mut rng, CodeKind::Voucher);
                let mut r = post(
                    Kind::VoucherLogin,
                    "/campaigns/login",
                    "",
                    json!({"username": user.name, "password": PASSWORD, "campaign": code}),
                );
                r.token = None;
                r.code = Some(code);
                r.user = Some(user.id);
                world.until_final(id, &mut rng, &r).await;
            }
            53..=75 => {
                orders += 1;
                let number = format!("{ORDER_PREFIX}-{}-{id}-{orders}", world.run_tag);
                coupon_flow(&world, id, &mut rng, &user, &number).await;
            }
            76..=80 => {
                let code = pick(&world, &mut rng, CodeKind::Coupon);
                let number = format!("{ORDER_PREFIX}-{}-{id}-q{orders}", world.run_tag);
                let mut r =
                    post(Kind::CouponQuote, "/coupons/quote", &user.token, order_body(&code, &number, &mut rng));
                r.code = Some(code);
                r.user = Some(user.id);
                world.until_final(id, &mut rng, &r).await;
            }
            81..=92 => {
                let mut r = post(Kind::Balance, "/wallet/balance", &user.token, json!({}));
                r.user = Some(user.id);
                world.until_final(id, &mut rng, &r).await;
            }
            _ => {
                let mut r = post(Kind::Transactions, "/wallet/transactions?limit=20", &user.token, Value::Null);
                r.method = reqwest::Method::GET;
                r.user = Some(user.id);
                world.until_final(id, &mut rng, &r).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
    }
}

fn fork(rng: &mut StdRng) -> StdRng {
    StdRng::seed_from_u64(rng.gen())
}

fn pick(world: &World, rng: &mut StdRng, kind: CodeKind) -> String {
    let of_kind: Vec<&SimCode> = world.codes.iter().filter(|c| c.kind == kind).collect();
    of_kind[rng.gen_range(0..of_kind.len())].name.clone()
}

async fn credit_use(world: &Arc<World>, id: usize, rng: &mut StdRng, user: &SimUser) {
    let code = pick(world, rng, CodeKind::Credit);
    redeem_credit(world, id, rng, user, &code).await;
}

pub async fn redeem_credit(world: &World, id: usize, rng: &mut StdRng, user: &SimUser, code: &str) -> Answer {
    let mut r = post(Kind::CreditUse, "/codes/use", &user.token, json!({ "code": code }));
    r.code = Some(code.to_string());
    r.user = Some(user.id);
    world.until_final(id, rng, &r).await.0
}

/// An order's coupon: 1-3 copies of the redeem at once (a checkout retrying),
/// and sometimes the order cancelled, by 1-2 concurrent cancels while one
/// more copy of the redeem arrives.
async fn coupon_flow(world: &Arc<World>, id: usize, rng: &mut StdRng, user: &SimUser, number: &str) {
    let code = pick(world, rng, CodeKind::Coupon);
    let body = order_body(&code, number, rng);
    let copies = rng.gen_range(1..=3);
    let mut tasks = Vec::new();
    for _ in 0..copies {
        let (w, mut r, u, c, b, n) =
            (world.clone(), fork(rng), user.clone(), code.clone(), body.clone(), number.to_string());
        tasks.push(tokio::spawn(async move {
            let mut req = post(Kind::CouponRedeem, "/coupons/redeem", &w.checkout, redeem_body(&b, u.id));
            req.code = Some(c);
            req.user = Some(u.id);
            req.order = Some(n);
            w.until_final(id, &mut r, &req).await
        }));
    }
    let mut redemption = None;
    for t in tasks {
        if let Ok((Answer::Ok, body)) = t.await {
            redemption = redemption.or(body["redemption_id"].as_i64());
        }
    }
    let Some(rid) = redemption else { return };
    if rng.gen_bool(0.4) {
        // Half the orders are cancelled later, after whatever faults came in between.
        if rng.gen_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..3000))).await;
        }
        let cancels = rng.gen_range(1..=2);
        let mut tasks = Vec::new();
        for _ in 0..cancels {
            let (w, mut r, u, c, n) = (world.clone(), fork(rng), user.clone(), code.clone(), number.to_string());
            tasks.push(tokio::spawn(async move {
                let mut req =
                    post(Kind::CouponCancel, &format!("/coupons/redemptions/{rid}/cancel"), &w.checkout, Value::Null);
                req.code = Some(c);
                req.user = Some(u.id);
                req.order = Some(n);
                req.id = Some(rid);
                w.until_final(id, &mut r, &req).await
            }));
        }
        // A checkout retrying the redeem while the order is being cancelled.
        if rng.gen_bool(0.5) {
            let (w, mut r, u, c, n) = (world.clone(), fork(rng), user.clone(), code.clone(), number.to_string());
            tasks.push(tokio::spawn(async move {
                let mut req = post(Kind::CouponRedeem, "/coupons/redeem", &w.checkout, redeem_body(&body, u.id));
                req.code = Some(c);
                req.user = Some(u.id);
                req.order = Some(n);
                w.until_final(id, &mut r, &req).await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The operator: pauses and resumes, raises and lowers limits, and ends one
/// code for good halfway through.
pub async fn operator(world: Arc<World>, seed: u64, deadline: Instant, run_for: Duration) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0AD0_11AB);
    let started = Instant::now();
    let to_end = rng.gen_range(0..world.codes.len());
    let mut ended = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let i = rng.gen_range(0..world.codes.len());
        if i == to_end && ended {
            continue;
        }
        let code = world.codes[i].name.clone();
        if !ended && i == to_end && started.elapsed() > run_for / 2 {
            ended = true;
            admin(&world, &mut rng, Kind::End, &format!("/admin/codes/{code}/end"), &code, None).await;
            continue;
        }
        match rng.gen_range(0..3) {
            0 => {
                admin(&world, &mut rng, Kind::Pause, &format!("/admin/codes/{code}/pause"), &code, None).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
                admin(&world, &mut rng, Kind::Resume, &format!("/admin/codes/{code}/resume"), &code, None).await;
            }
            1 => {
                let limit = world.limits.lock().unwrap()[i] + rng.gen_range(5..=30);
                if let Some(l) = admin(&world, &mut rng, Kind::RaiseLimit, "", &code, Some(limit)).await {
                    world.limits.lock().unwrap()[i] = l;
                }
            }
            _ => {
                let limit = (world.limits.lock().unwrap()[i] - rng.gen_range(1..=10)).max(1);
                if let Some(l) = admin(&world, &mut rng, Kind::LowerLimit, "", &code, Some(limit)).await {
                    world.limits.lock().unwrap()[i] = l;
                }
            }
        }
    }
}

/// One operator action (retried on 503 / no answer); returns the limit answered.
pub async fn admin(
    world: &World,
    rng: &mut StdRng,
    kind: Kind,
    path: &str,
    code: &str,
    limit: Option<i64>,
) -> Option<i64> {
    let mut r = match limit {
        Some(l) => {
            let mut r = post(kind, &format!("/admin/codes/{code}"), &world.admin, json!({ "limit": l }));
            r.method = reqwest::Method::PATCH;
            r
        }
        None => post(kind, path, &world.admin, Value::Null),
    };
    r.code = Some(code.to_string());
    // Half the limit changes are tried once: an operator who saw an error
    // and moved on (what PostgreSQL and the gate were left with must agree).
    let (answer, body) = if limit.is_some() && rng.gen_bool(0.5) {
        let gw = rng.gen_range(0..world.gateways.len());
        let op = world.new_op();
        world.attempt(op, OPERATOR, gw, &r).await
    } else {
        world.until_final(OPERATOR, rng, &r).await
    };
    (answer == Answer::Ok).then(|| body["limit"].as_i64()).flatten()
}

pub fn spawn_clients(
    world: &Arc<World>,
    clients: usize,
    seed: u64,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients).map(|i| tokio::spawn(client(world.clone(), i, seed, deadline))).collect()
}
