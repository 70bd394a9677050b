//! GET /admin/codes/{code}/events: the code's report as a Server-Sent Events
//! stream, pushed whenever it changes (checked every 500 ms), with a comment
//! line every 15 s to keep proxies from closing an idle stream. A stream ends
//! after an hour; the dashboard reconnects.

use std::time::{Duration, Instant};

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;

use super::{report, routes::find, Code};
use crate::auth::AdminUser;
use crate::error::{ApiError, ErrorBody};
use crate::startup::AppState;

const TICK: Duration = Duration::from_millis(500);
const KEEPALIVE: Duration = Duration::from_secs(15);
const MAX_STREAM: Duration = Duration::from_secs(3600);

struct Feed {
    state: web::Data<AppState>,
    code: Code,
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
            if self.started.elapsed() > MAX_STREAM {
                return None;
            }
            if !self.first {
                tokio::time::sleep(TICK).await;
            }
            self.first = false;
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
    params(("code" = String, Path, description = "the code, case-insensitive")), responses(
        (status = 200, description = "an event stream of reports", content_type = "text/event-stream", body = String),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: admin only", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn events_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let code = find(&state, &path.into_inner()).await?;
    let feed =
        Feed { state, code, last: String::new(), last_sent: Instant::now(), started: Instant::now(), first: true };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next_chunk().await.map(|chunk| (Ok::<_, actix_web::Error>(chunk), feed))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}
