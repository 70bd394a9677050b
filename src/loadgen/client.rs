//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection per
//! worker, built on hyper's low-level connection API so that exactly N
//! connections carry the load and the client spends as little CPU as it can.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request as HttpRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request prepared before the clock starts (cheap to clone: shared bytes).
#[derive(Clone, Debug)]
pub struct Request {
    pub path: &'static str,
    /// `Bearer <token>`, or none.
    pub auth: Option<HeaderValue>,
    pub body: Bytes,
}

/// Status recorded when the request never got an HTTP answer.
pub const TRANSPORT_ERROR: u16 = 0;

/// No single request may take longer than this; it then counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection to the target; reconnects after a failure.
pub struct Connection {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// Opens the connection now, so that connecting is not part of the measurement.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let mut conn = Connection { addr, host, sender: None };
        conn.sender = Some(conn.handshake().await?);
        Ok(conn)
    }

    async fn handshake(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; a failure shows up on the next send.
            let _ = driver.await;
        });
        Ok(sender)
    }

    /// Sends `request` and reads the whole response; returns its status, or
    /// `TRANSPORT_ERROR` (and reconnects on the next call) if there was none.
    pub async fn send(&mut self, request: &Request) -> u16 {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.try_send(request)).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) | Err(_) => {
                self.sender = None;
                TRANSPORT_ERROR
            }
        }
    }

    async fn try_send(&mut self, request: &Request) -> anyhow::Result<u16> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.handshake().await?);
        }
        let sender = self.sender.as_mut().ok_or_else(|| anyhow::anyhow!("no connection"))?;
        sender.ready().await?;
        let mut builder = HttpRequest::builder()
            .method(Method::POST)
            .uri(request.path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = &request.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let response = sender.send_request(builder.body(Full::new(request.body.clone()))?).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}
