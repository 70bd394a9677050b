//! Fixtures made fast, straight through the library: users inserted by one SQL
//! statement (no password hashing), tokens minted with the configured secret,
//! codes created as an operator would (`create_code`: Postgres, then the gate).

use bytes::Bytes;
use hyper::header::HeaderValue;

use super::client::{bearer, Request};
use crate::auth::Role;
use crate::codes::admin::{create_code, CreateCode};
use crate::codes::Code;
use crate::state::AppState;

/// Users made for one run, and their ready-made `Authorization` headers.
pub struct Users {
    pub ids: Vec<i64>,
    pub auth: Vec<HeaderValue>,
}

impl Users {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A short random tag, so that repeated runs on one database never collide.
pub fn run_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Inserts `n` password-less users in one statement and mints a token for each.
pub async fn create_users(state: &AppState, n: usize) -> anyhow::Result<Users> {
    let db = state.pg.get().await?;
    let count = i32::try_from(n)?;
    let rows = db
        .query(
            "INSERT INTO users (username, password_hash)
             SELECT 'lg_' || $1::text || '_' || g, '!' FROM generate_series(1, $2::int) g RETURNING id",
            &[&run_tag(), &count],
        )
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let auth = ids.iter().map(|id| mint(state, *id)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Users { ids, auth })
}

fn mint(state: &AppState, user_id: i64) -> anyhow::Result<HeaderValue> {
    let token = state.tokens.issue(user_id, Role::User).map_err(|e| anyhow::anyhow!("cannot mint a token: {e}"))?;
    bearer(&token)
}

/// Creates a code named `<prefix>_<tag>` with the given amount and limit.
pub async fn new_code(state: &AppState, prefix: &str, amount: i64, limit: i64) -> anyhow::Result<Code> {
    let input = CreateCode::credit(format!("{prefix}_{}", run_tag()).to_uppercase(), amount, limit);
    create_code(&state.pg, &state.gate, input, &state.config.default_time_zone)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the code: {e}"))
}

/// `POST /codes/use {"code": ...}` as `auth`.
pub fn use_code(code: &str, auth: &HeaderValue) -> Request {
    Request { path: "/codes/use", auth: Some(auth.clone()), body: use_code_body(code) }
}

pub fn use_code_body(code: &str) -> Bytes {
    Bytes::from(format!(r#"{{"code":"{code}"}}"#))
}

/// `POST /wallet/balance {}` as `auth`.
pub fn balance(auth: &HeaderValue) -> Request {
    Request { path: "/wallet/balance", auth: Some(auth.clone()), body: Bytes::from_static(b"{}") }
}

/// Peak resident memory (VmHWM, KiB) of a process, if it can be read.
pub fn peak_memory_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
