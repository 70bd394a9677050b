//! Drives prepared requests through a fixed pool of keep-alive connections:
//! every connection is opened first, then all workers are released at once
//! (a barrier) and each loops over its share, recording every answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use super::client::{Connection, Request};
use super::stats::{Recorder, Summary};

/// Builds the i-th request of an open-ended run.
pub type Generator = Arc<dyn Fn(u64) -> Request + Send + Sync>;

/// What the workers send.
#[derive(Clone)]
pub enum Work {
    /// Each request exactly once, shared round-robin among the workers.
    Once(Arc<Vec<Request>>),
    /// Generated requests until `deadline` passes or `stop` is raised.
    Until { generate: Generator, duration: Duration, stop: Arc<AtomicBool> },
}

impl Work {
    pub fn for_duration(duration: Duration, generate: Generator) -> Self {
        Work::Until { generate, duration, stop: Arc::new(AtomicBool::new(false)) }
    }
}

/// Runs `work` over `connections` connections to `addr`; `expected` are the
/// non-200 statuses that are not errors in this scenario.
pub async fn drive(addr: SocketAddr, connections: usize, work: Work, expected: &[u16]) -> anyhow::Result<Summary> {
    let connections = match &work {
        Work::Once(requests) => connections.min(requests.len()).max(1),
        Work::Until { .. } => connections.max(1),
    };
    let opened = open_all(addr, connections).await?;
    let barrier = Arc::new(Barrier::new(connections + 1));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(connections);
    for (index, conn) in opened.into_iter().enumerate() {
        let shard = Shard { index, of: connections, work: work.clone(), next: next.clone(), barrier: barrier.clone() };
        workers.push(tokio::spawn(shard.run(conn)));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Recorder::default();
    for worker in workers {
        all.merge(worker.await?);
    }
    Ok(all.summarize(start, start.elapsed(), expected))
}

async fn open_all(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Connection>> {
    let opening: Vec<_> = (0..n).map(|_| tokio::spawn(Connection::open(addr))).collect();
    let mut out = Vec::with_capacity(n);
    for conn in opening {
        out.push(conn.await??);
    }
    Ok(out)
}

/// One worker's part of the work.
struct Shard {
    index: usize,
    of: usize,
    work: Work,
    next: Arc<AtomicU64>,
    barrier: Arc<Barrier>,
}

impl Shard {
    async fn run(self, mut conn: Connection) -> Recorder {
        self.barrier.wait().await;
        match &self.work {
            Work::Once(requests) => send_share(&mut conn, requests, self.index, self.of).await,
            Work::Until { generate, duration, stop } => {
                send_until(&mut conn, generate, Instant::now() + *duration, stop, &self.next).await
            }
        }
    }
}

async fn send_share(conn: &mut Connection, requests: &[Request], index: usize, of: usize) -> Recorder {
    let mut recorder = Recorder::with_capacity(requests.len() / of + 1);
    for request in requests.iter().skip(index).step_by(of) {
        let sent = Instant::now();
        let status = conn.send(request).await;
        recorder.record(status, sent, Instant::now());
    }
    recorder
}

async fn send_until(
    conn: &mut Connection,
    generate: &Generator,
    deadline: Instant,
    stop: &AtomicBool,
    next: &AtomicU64,
) -> Recorder {
    let mut recorder = Recorder::with_capacity(4096);
    loop {
        let sent = Instant::now();
        if sent >= deadline || stop.load(Ordering::Relaxed) {
            return recorder;
        }
        let request = generate(next.fetch_add(1, Ordering::Relaxed));
        let status = conn.send(&request).await;
        recorder.record(status, sent, Instant::now());
    }
}
