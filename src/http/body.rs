//! Request bodies, read whole before routing, within two bounds a stranger
//! cannot stretch: at most `BODY_LIMIT_BYTES` (after inflation) and within
//! `BODY_READ_TIMEOUT_MS` of the head (a client trickling a byte a second
//! holds a connection for that long, no more).
//!
//! `gzip` and `deflate` bodies are inflated here, never more than the limit
//! plus one byte: actix's own decoder inflates each network chunk whole (a
//! 16 KiB chunk of a gzip bomb becomes 16 MiB in memory before any limit is
//! checked), this one stops as soon as the output passes the limit. The
//! handler then sees a plain body with no `Content-Encoding`.

use std::io::Read;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::HttpMessage;
use std::future::Future;
use std::task::{Context, Poll};

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use futures_util::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

fn encoding_of(req: &ServiceRequest) -> Result<Encoding, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_ENCODING) else { return Ok(Encoding::Identity) };
    match value.to_str().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Ok("" | "identity") => Ok(Encoding::Identity),
        Ok("gzip" | "x-gzip") => Ok(Encoding::Gzip),
        Ok("deflate") => Ok(Encoding::Deflate),
        _ => Err(ApiError::MalformedJson("unsupported Content-Encoding (use gzip, deflate or none)".into())),
    }
}

/// The middleware: reads (and inflates) the body, then hands it on.
pub async fn read_body(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let (limit, timeout) = match req.app_data::<web::Data<AppState>>() {
        Some(state) => (state.config.body_limit_bytes, state.config.limits.body_read_timeout),
        None => return next.call(req).await.map(ServiceResponse::map_into_boxed_body),
    };
    let encoding = match encoding_of(&req) {
        Ok(encoding) => encoding,
        Err(e) => return Ok(req.error_response(e).map_into_boxed_body()),
    };
    match read(&mut req, limit, timeout).await.and_then(|raw| inflate(raw, encoding, limit)) {
        Ok(body) => {
            if encoding != Encoding::Identity {
                let headers = req.headers_mut();
                headers.remove(header::CONTENT_ENCODING);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            req.set_payload(body.into());
            next.call(req).await.map(ServiceResponse::map_into_boxed_body)
        }
        Err(e) => Ok(req.error_response(e).map_into_boxed_body()),
    }
}

/// The raw body: refused at once if it announces more than `limit`, cut off
/// as soon as it sends more, or when `timeout` passes.
async fn read(req: &mut ServiceRequest, limit: usize, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let announced =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut payload = req.take_payload();
    let mut deadline = Deadline::new(tokio::time::Instant::now() + timeout);
    let mut body = BytesMut::new();
    loop {
        match std::future::poll_fn(|cx| deadline.poll_next(&mut payload, cx)).await {
            None => return Err(ApiError::RequestTimeout),
            Some(None) => return Ok(body.freeze()),
            Some(Some(Err(e))) => return Err(ApiError::MalformedJson(format!("could not read the body: {e}"))),
            Some(Some(Ok(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// The body's deadline, armed only when the body is really late. actix calls
/// the app as soon as the head is parsed, before it feeds the body bytes
/// that arrived with it, then polls again in the same pass: so a body that
/// was already there is found on the second look, and a timer (a wheel
/// insert and removal per request) is only armed when that look finds
/// nothing either. The first miss wakes the task itself, so a client that
/// sends nothing more still reaches the timer.
struct Deadline {
    at: tokio::time::Instant,
    looked: bool,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    fn new(at: tokio::time::Instant) -> Self {
        Deadline { at, looked: false, timer: None }
    }

    /// The payload's next item, or None once the deadline has passed.
    fn poll_next(
        &mut self,
        payload: &mut Payload,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Option<Result<Bytes, PayloadError>>>> {
        if let Poll::Ready(item) = payload.poll_next_unpin(cx) {
            return Poll::Ready(Some(item));
        }
        if !self.looked {
            self.looked = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let at = self.at;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(cx).map(|()| None)
    }
}

/// Inflates at most `limit + 1` bytes: enough to know the body is too large.
fn inflate(raw: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, ApiError> {
    let reader: Box<dyn Read> = match encoding {
        Encoding::Identity => return Ok(raw),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&raw[..])),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&raw[..])),
    };
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit + 1));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::MalformedJson(format!("could not inflate the body: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let _ = e.write_all(data);
        Bytes::from(e.finish().unwrap_or_default())
    }

    #[test]
    fn inflation_stops_just_past_the_limit() {
        let bomb = gzip(&vec![b' '; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "64 MiB of spaces gzip to {} bytes", bomb.len());
        assert!(matches!(inflate(bomb, Encoding::Gzip, 16_384), Err(ApiError::PayloadTooLarge(16_384))));
        let small = gzip(br#"{"code":"SPRING"}"#);
        assert_eq!(inflate(small, Encoding::Gzip, 16_384).ok().as_deref(), Some(&br#"{"code":"SPRING"}"#[..]));
        assert!(matches!(
            inflate(Bytes::from_static(b"not gzip"), Encoding::Gzip, 10),
            Err(ApiError::MalformedJson(_))
        ));
    }
}
