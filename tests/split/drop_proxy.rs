//! A TCP proxy between the redemption role and the wallet that can lose the
//! wallet's answers: the request reaches the wallet (which applies the
//! credit), the answer is thrown away and the connection cut, so the caller
//! cannot tell whether the credit landed. What the outbox's retry must
//! survive without crediting twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone)]
pub struct DropProxy {
    pub port: u16,
    /// Answers still to lose.
    to_drop: Arc<AtomicUsize>,
    /// Answers lost so far.
    dropped: Arc<AtomicUsize>,
}

impl DropProxy {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = DropProxy { port, to_drop: Arc::default(), dropped: Arc::default() };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let p = p.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        p.pipe(client, server).await;
                    }
                });
            }
        });
        proxy
    }

    /// Lose the next `n` answers.
    pub fn drop_next(&self, n: usize) {
        self.to_drop.store(n, Ordering::SeqCst);
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    async fn pipe(&self, client: TcpStream, server: TcpStream) {
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let upstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        };
        let downstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let lose = self
                            .to_drop
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                            .is_ok();
                        if lose {
                            // The wallet answered (so it committed); the caller never hears it.
                            self.dropped.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        };
        // Either side ending ends both: a lost answer cuts the connection.
        tokio::select! {
            _ = upstream => {}
            _ = downstream => {}
        }
    }
}
