//! GET /admin/codes/{code}/events: the code's report as a Server-Sent Events
//! stream, pushed whenever it changes (checked every 500 ms), with a comment
//! line every 2 s when quiet: it keeps proxies from closing an idle stream,
//! and a write is how the server learns that a client went away (actix ends a
//! response when a write fails), so a closed stream's place under the cap
//! comes back within seconds. A stream ends
//! after an hour, when its token expires, or when its admin is disabled;
//! the dashboard reconnects (with a fresh token).
//!
//! Each stream costs two Postgres aggregates a tick, so they are capped:
//! `SSE_STREAMS_PER_ADMIN` per admin and `SSE_STREAMS_TOTAL` per gateway;
//! past either, 429 `too_many_streams` with Retry-After.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;

use super::{report, routes::find, Code};
use crate::auth::AdminUser;
use crate::error::responses::AdminErrors;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

const TICK: Duration = Duration::from_millis(500);
const KEEPALIVE: Duration = Duration::from_secs(2);
const MAX_STREAM: Duration = Duration::from_secs(3600);

/// Open streams, per admin and in all.
pub struct Streams {
    per_admin: usize,
    total: usize,
    open: Arc<Mutex<HashMap<i64, usize>>>,
}

/// One open stream's place; dropping it (the stream ended or the client
/// went away) gives the place back.
pub struct StreamPlace {
    admin: i64,
    open: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Streams {
    pub fn new(per_admin: usize, total: usize) -> Self {
        Streams { per_admin, total, open: Arc::default() }
    }

    pub fn try_open(&self, admin: i64) -> Result<StreamPlace, ApiError> {
        let mut open = self.open.lock().map_err(|_| ApiError::internal(anyhow::anyhow!("stream count poisoned")))?;
        if open.values().sum::<usize>() >= self.total {
            return Err(ApiError::TooManyStreams("on this gateway"));
        }
        let mine = open.entry(admin).or_default();
        if *mine >= self.per_admin {
            return Err(ApiError::TooManyStreams("for this admin"));
        }
        *mine += 1;
        Ok(StreamPlace { admin, open: self.open.clone() })
    }

    /// Streams open now (all admins).
    pub fn open(&self) -> usize {
        self.open.lock().map(|o| o.values().sum()).unwrap_or(0)
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock() {
            if let Some(n) = open.get_mut(&self.admin) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.admin);
                }
            }
        }
    }
}

struct Feed {
    state: web::Data<AppState>,
    code: Code,
    admin: i64,
    /// The token's expiry (Unix seconds): the stream ends there.
    expires_at: u64,
    _place: StreamPlace,
    last: String,
    last_sent: Instant,
    started: Instant,
    first: bool,
}

impl Feed {
    /// The next chunk: an event when the report changed, a keep-alive
    /// comment when quiet for long, or `None` when the stream is done.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if !self.first {
                tokio::time::sleep(TICK).await;
            }
            self.first = false;
            if self.started.elapsed() > MAX_STREAM || unix_now() >= self.expires_at {
                return None;
            }
            if self.state.disabled_users.contains(self.admin) {
                tracing::info!(admin = self.admin, "report stream closed: its admin was disabled");
                return None;
            }
            let json = match report::build(&self.state, &self.code).await {
                Ok(r) => serde_json::to_string(&r).unwrap_or_default(),
                // A transient failure skips a beat; the stream goes on.
                Err(_) => String::new(),
            };
            if !json.is_empty() && json != self.last {
                self.last = json;
                self.last_sent = Instant::now();
                return Some(Bytes::from(format!("event: report\ndata: {}\n\n", self.last)));
            }
            if self.last_sent.elapsed() > KEEPALIVE {
                self.last_sent = Instant::now();
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
        }
    }
}

/// Live report of one code (Server-Sent Events, `event: report`).
#[utoipa::path(get, path = "/admin/codes/{code}/events", tag = "admin", security(("bearer" = [])),
    params(("code" = crate::codes::CodeNameSchema, Path, description = "the code, case-insensitive")), responses(
        (status = 200, description = "an event stream of reports", content_type = "text/event-stream", body = String),
        AdminErrors,
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 429, description = "too_many_streams: per admin or per gateway (see Retry-After)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds")))))]
pub async fn events_route(
    state: web::Data<AppState>,
    admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let code = find(&state, &path.into_inner()).await?;
    let place = state.streams.try_open(admin.0.user_id)?;
    let feed = Feed {
        admin: admin.0.user_id,
        expires_at: admin.0.expires_at,
        _place: place,
        state,
        code,
        last: String::new(),
        last_sent: Instant::now(),
        started: Instant::now(),
        first: true,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next_chunk().await.map(|chunk| (Ok::<_, actix_web::Error>(chunk), feed))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_admin_and_in_all_and_places_come_back() {
        let streams = Streams::new(2, 3);
        let a1 = streams.try_open(1);
        let a2 = streams.try_open(1);
        assert!(a1.is_ok() && a2.is_ok());
        assert!(matches!(streams.try_open(1), Err(ApiError::TooManyStreams(_))));
        let b1 = streams.try_open(2);
        assert!(b1.is_ok());
        assert!(matches!(streams.try_open(2), Err(ApiError::TooManyStreams(_))), "the total is 3");
        drop(a1);
        assert_eq!(streams.open(), 2);
        assert!(streams.try_open(2).is_ok());
    }
}
