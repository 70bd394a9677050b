//! A private Redis Cluster for the failover test: 3 masters + 3 replicas on
//! free loopback ports, each node a process this test can kill or freeze.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::scratch_dir;

pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: HashMap<u16, Child>,
    dir: PathBuf,
}

/// A port whose cluster bus port (port + 10000) is free too.
fn cluster_port(taken: &[u16]) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55_000 && !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = scratch_dir("cluster");
        let mut ports = vec![];
        for _ in 0..6 {
            ports.push(cluster_port(&ports));
        }
        let mut cluster = RedisCluster { ports: ports.clone(), children: HashMap::new(), dir };
        for port in ports {
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                // Replicas sync at once, not after the default 5 s wait for more of them.
                .args(["--repl-diskless-sync-delay", "0"])
                // The other masters keep serving their slots while one fails over.
                .args(["--cluster-require-full-coverage", "no"])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&node_dir)
                .arg("--logfile")
                .arg(node_dir.join("redis.log"))
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/services.sh up installs it)");
            cluster.children.insert(port, child);
        }
        for port in &cluster.ports {
            wait_for(&format!("node {port}"), Duration::from_secs(10), || cli(*port, &["ping"]).contains("PONG"));
        }
        let hosts: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&hosts)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        wait_for("the cluster to form", Duration::from_secs(30), || {
            cluster.ports.iter().all(|p| cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
                && cli(cluster.ports[0], &["cluster", "nodes"]).matches("slave").count() == 3
        });
        // A replica that never finished its first sync refuses to take over.
        wait_for("every replica's first sync", Duration::from_secs(30), || {
            cluster
                .ports
                .iter()
                .filter(|p| cli(**p, &["info", "replication"]).contains("master_link_status:up"))
                .count()
                == 3
        });
        cluster
    }

    /// The seeds, as REDIS_CLUSTER_NODES takes them.
    pub fn nodes(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// (master port, its replica's port) serving `slot`, as `via` sees it.
    pub fn owner_of(&self, slot: u16, via: u16) -> Option<(u16, Option<u16>)> {
        let nodes = cli(via, &["cluster", "nodes"]);
        let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split_whitespace().collect()).collect();
        let port_of = |f: &[&str]| f.get(1).and_then(|a| a.split(['@', ':']).nth(1)).and_then(|p| p.parse().ok());
        let master = lines.iter().find(|f| {
            f.get(2).is_some_and(|flags| flags.contains("master") && !flags.contains("fail"))
                && f.iter().skip(8).any(|range| {
                    let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                    match (ends.next(), ends.next()) {
                        (Some(a), Some(b)) => (a..=b).contains(&slot),
                        (Some(a), None) => a == slot,
                        _ => false,
                    }
                })
        })?;
        let replica = lines
            .iter()
            .find(|f| f.get(3) == master.first() && f.get(2).is_some_and(|fl| fl.contains("slave")))
            .and_then(|f| port_of(f));
        Some((port_of(master)?, replica))
    }

    /// SIGKILL: the node dies with whatever it had not replicated yet.
    pub fn kill(&mut self, port: u16) {
        if let Some(mut c) = self.children.remove(&port) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a frozen replica reads nothing of the replication stream.
    pub fn freeze(&self, port: u16, frozen: bool) {
        let pid = self.children.get(&port).map(|c| c.id()).unwrap();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("cluster logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
