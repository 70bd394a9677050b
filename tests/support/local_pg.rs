#![allow(dead_code)] // each test crate uses what it needs
//! The project-local PostgreSQL that `scripts/services.sh` runs, where tests
//! create their databases unless TEST_DATABASE_URL (or DATABASE_URL) names
//! another server. It takes a password (scram-sha-256), generated per data
//! directory into `.local/pg-password` (0600); the default URL reads it.

use std::path::{Path, PathBuf};

/// postgres://postgres:<password>@127.0.0.1:<PG_PORT, else 5479>/postgres.
pub fn default_server_url() -> String {
    let port = std::env::var("PG_PORT").unwrap_or_else(|_| "5479".into());
    let dir = std::env::var("SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".local"));
    let password = std::fs::read_to_string(dir.join("pg-password")).map(|p| p.trim().to_string()).unwrap_or_default();
    if password.is_empty() {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    } else {
        format!("postgres://postgres:{}@127.0.0.1:{port}/postgres", encode(&password))
    }
}

/// The server URL pointed at database `name`, keeping user, password and port.
pub fn with_database(server_url: &str, name: &str) -> String {
    let config: tokio_postgres::Config = server_url.parse().expect("a valid Postgres URL");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    match config.get_password() {
        Some(pw) => {
            format!("postgres://{}:{}@127.0.0.1:{port}/{name}", encode(user), encode(&String::from_utf8_lossy(pw)))
        }
        None => format!("postgres://{}@127.0.0.1:{port}/{name}", encode(user)),
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
