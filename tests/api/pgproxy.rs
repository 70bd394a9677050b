//! A TCP proxy between the app and PostgreSQL that can lose one reply: the
//! client's message that contains a marker (a parameter value of the commit
//! statement) goes through, the server runs and commits it, and the proxy
//! then cuts the connection instead of passing the answer on. The gateway
//! sees a broken connection although its commit landed: the ambiguous commit,
//! for real, deterministically.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct PgProxy {
    pub port: u16,
    armed: Arc<AtomicBool>,
    /// Replies swallowed so far.
    pub cut: Arc<AtomicUsize>,
}

impl PgProxy {
    /// Proxies 127.0.0.1:<port> to `upstream` ("host:port"); `marker` names
    /// the message whose reply is lost once armed.
    pub async fn start(upstream: String, marker: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let (armed2, cut2) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(pipe(client, server, marker, armed2.clone(), cut2.clone()));
            }
        });
        PgProxy { port, armed, cut }
    }

    /// The next message carrying the marker loses its reply.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    marker: &'static [u8],
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let swallow = Arc::new(AtomicBool::new(false));
    let swallow_up = swallow.clone();
    let upward = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if chunk.windows(marker.len()).any(|w| w == marker) && armed.swap(false, Ordering::SeqCst) {
                swallow_up.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(chunk).await.is_err() {
                break;
            }
        }
    });
    // Downward, message by message (type byte, then a length that counts
    // itself), so the cut falls right after the server's ReadyForQuery:
    // by then the statement's implicit transaction has committed.
    loop {
        let mut head = [0u8; 5];
        if server_rx.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if server_rx.read_exact(&mut body).await.is_err() {
            break;
        }
        if swallow.load(Ordering::SeqCst) {
            if head[0] == b'Z' {
                cut.fetch_add(1, Ordering::SeqCst);
                break;
            }
            continue;
        }
        if client_tx.write_all(&head).await.is_err() || client_tx.write_all(&body).await.is_err() {
            break;
        }
    }
    upward.abort();
    let _ = client_tx.shutdown().await;
}
