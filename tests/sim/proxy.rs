//! A small TCP proxy the nemesis controls, one between each gateway and each
//! of Redis and PostgreSQL. Faults: added latency, every connection dropped,
//! half-open (bytes held, nothing closed), and a cut right after a chunk that
//! carries a marker was forwarded (the server runs the statement, the client
//! sees its connection die: an ambiguous commit).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk waits this long before it is forwarded (both directions).
    Latency(Duration),
    /// Nothing is forwarded and nothing is closed until the mode changes.
    HalfOpen,
}

struct Control {
    mode: watch::Sender<Mode>,
    /// Bumped to drop every open connection.
    kill: watch::Sender<u64>,
    /// Client-to-server chunks containing one of these are forwarded, then the
    /// connection is cut, while `cuts_left` > 0.
    markers: Mutex<Vec<Vec<u8>>>,
    cuts_left: AtomicUsize,
    cuts_done: AtomicU64,
}

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    control: Arc<Control>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target_port`.
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = Arc::new(Control {
            mode: watch::channel(Mode::Pass).0,
            kill: watch::channel(0).0,
            markers: Mutex::new(Vec::new()),
            cuts_left: AtomicUsize::new(0),
            cuts_done: AtomicU64::new(0),
        });
        let c = control.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let c = c.clone();
                tokio::spawn(async move {
                    // The server may be down (a restart): the client sees its connection close.
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        connection(client, server, c).await;
                    }
                });
            }
        });
        Proxy { port, control }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    /// Closes every connection open now (the clients reconnect).
    pub fn drop_connections(&self) {
        self.control.kill.send_modify(|g| *g += 1);
    }

    /// The next `count` client-to-server chunks carrying one of `markers` are
    /// forwarded, then their connection is cut.
    pub fn cut_after(&self, markers: &[&[u8]], count: usize) {
        *self.control.markers.lock().unwrap() = markers.iter().map(|m| m.to_vec()).collect();
        self.control.cuts_left.store(count, Ordering::SeqCst);
    }

    /// Back to plain forwarding (open connections stay open).
    pub fn heal(&self) {
        self.control.cuts_left.store(0, Ordering::SeqCst);
        self.set_mode(Mode::Pass);
    }

    pub fn cuts_done(&self) -> u64 {
        self.control.cuts_done.load(Ordering::SeqCst)
    }
}

async fn connection(client: TcpStream, server: TcpStream, control: Arc<Control>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let (cut_tx, cut_rx) = watch::channel(false);
    let up = pump(cr, sw, control.clone(), true, cut_tx.clone(), cut_rx.clone());
    let down = pump(sr, cw, control, false, cut_tx, cut_rx);
    // Either direction ending (or a cut) ends both: the halves are dropped, both sockets close.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: Arc<Control>,
    upstream: bool,
    cut_tx: watch::Sender<bool>,
    mut cut_rx: watch::Receiver<bool>,
) {
    let mut kill = control.kill.subscribe();
    kill.mark_unchanged();
    let mut mode = control.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = kill.changed() => return,
            _ = cut_rx.changed() => return,
        };
        // Apply the mode at the moment of forwarding (a half-open link holds the chunk).
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Latency(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => break,
                        _ = kill.changed() => return,
                    }
                }
                Mode::HalfOpen => {
                    tokio::select! {
                        _ = mode.changed() => continue,
                        _ = kill.changed() => return,
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if upstream && control.cuts_left.load(Ordering::SeqCst) > 0 {
            let hit = control.markers.lock().unwrap().iter().any(|m| contains(&buf[..n], m));
            if hit && take_one(&control.cuts_left) {
                let _ = to.flush().await;
                control.cuts_done.fetch_add(1, Ordering::SeqCst);
                // Let the bytes leave before the sockets close (FIN, not RST:
                // the server must read the statement it was sent).
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = cut_tx.send(true);
                return;
            }
        }
    }
}

fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_holds_and_cuts_as_told() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"hello", Duration::from_secs(2)).await.as_deref(), Some(&b"hello"[..]));

        proxy.set_mode(Mode::HalfOpen);
        assert_eq!(roundtrip(&mut s, b"held", Duration::from_millis(300)).await, None, "half-open holds bytes");
        proxy.heal();
        let mut late = [0u8; 4];
        s.read_exact(&mut late).await.unwrap();
        assert_eq!(&late, b"held", "held bytes flow once healed");

        proxy.cut_after(&[b"COMMIT"], 1);
        assert_eq!(roundtrip(&mut s, b"plain", Duration::from_secs(2)).await.as_deref(), Some(&b"plain"[..]));
        let _ = roundtrip(&mut s, b"x COMMIT y", Duration::from_millis(300)).await;
        assert_eq!(proxy.cuts_done(), 1, "the marked chunk was forwarded, then the connection cut");
        assert_eq!(roundtrip(&mut s, b"after", Duration::from_millis(500)).await, None, "cut after the marker");

        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(roundtrip(&mut s, b"again", Duration::from_secs(2)).await.is_some());
        proxy.drop_connections();
        assert_eq!(roundtrip(&mut s, b"gone", Duration::from_millis(500)).await, None, "dropped");
    }
}
