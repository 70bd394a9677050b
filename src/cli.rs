//! The command line: one binary, six subcommands. Parsing only; each
//! command calls into the library.

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::auth::{store as users, Role, Scope};
use crate::codes::admin::{create_code, CreateCode};
use crate::config::Config;
use crate::startup::{AppState, Application};
use crate::{db, reconciler};

#[derive(Parser)]
#[command(name = "redeem-gateway", version, about = "Hands out limited rewards fairly under a traffic spike")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Migrate and serve HTTP on HTTP_ADDR (the reconciler starts in the background).
    Serve {
        /// all (one process, the default), or one half of the split: wallet
        /// (balances, ledger, service credits) or redemption (everything
        /// else). Overrides ROLE.
        #[arg(long)]
        role: Option<String>,
    },
    /// Write a fresh Ed25519 private key (PKCS#8 PEM) for the split's token
    /// signing (JWT_SIGNING_KEY_FILE of the redemption role). Refuses to
    /// overwrite a file.
    Keygen {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Create a credit code in Postgres and load it into the Redis gate.
    CreateCode {
        #[arg(long)]
        code: String,
        /// Credit per redemption, an integer in the wallet's currency unit.
        #[arg(long)]
        amount: i64,
        /// How many users may redeem it.
        #[arg(long)]
        limit: i64,
        /// RFC 3339, e.g. 2026-12-01T00:00:00Z
        #[arg(long)]
        starts_at: Option<DateTime<Utc>>,
        #[arg(long)]
        ends_at: Option<DateTime<Utc>>,
        /// Count its redemptions under its own name in the metrics.
        #[arg(long)]
        tracked: bool,
    },
    /// Print a bearer token, bare. `--user NAME [--admin]`: a user token (the
    /// user is created without a usable password if missing), for operators
    /// and load tests. `--service NAME --scope a,b`: a service token for a
    /// checkout or top-up service (scopes: coupons:redeem, coupons:cancel,
    /// wallet:credit, wallet:debit), valid SERVICE_TOKEN_TTL_SECONDS.
    Token {
        #[arg(long, required_unless_present = "service", conflicts_with = "service")]
        user: Option<String>,
        #[arg(long, requires = "user")]
        admin: bool,
        #[arg(long, requires = "scope")]
        service: Option<String>,
        #[arg(long, value_delimiter = ',', requires = "service")]
        scope: Vec<String>,
    },
    /// Run one reconciler pass now and print what it did.
    Reconcile,
}

impl Cli {
    /// `serve --role`, which wins over `ROLE` when the config is read.
    pub fn role(&self) -> Option<&str> {
        match &self.command {
            Command::Serve { role } => role.as_deref(),
            _ => None,
        }
    }
}

pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        // `--role` was applied when the config was read (Cli::role).
        Command::Serve { .. } => {
            let app = Application::build(config).await?;
            tracing::info!(port = app.port(), "serving");
            app.run_until_stopped().await?;
        }
        Command::Keygen { out } => keygen(&out)?,
        Command::Migrate => {
            db::migrate(&config).await?;
            println!("migrations applied");
        }
        Command::CreateCode { code, amount, limit, starts_at, ends_at, tracked } => {
            db::migrate(&config).await?;
            let state = AppState::connect(config).await?;
            let input =
                CreateCode { starts_at, ends_at, tracked: Some(tracked), ..CreateCode::credit(code, amount, limit) };
            let code = create_code(&state.pg, &state.gate, input, &state.config.default_time_zone)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string(&code)?);
        }
        Command::Token { service: Some(service), scope, .. } => {
            let scopes = scope
                .iter()
                .map(|s| {
                    Scope::parse(s.trim()).ok_or_else(|| {
                        let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                        anyhow::anyhow!("unknown scope {s:?} (known: {})", known.join(", "))
                    })
                })
                .collect::<anyhow::Result<Vec<Scope>>>()?;
            // No database: a service token is a signed statement, nothing stored.
            // The role's own key: Ed25519 for the split's redemption role.
            let tokens = crate::auth::TokenKeys::for_role(&config)?;
            println!("{}", tokens.issue_service(&service, &scopes).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        Command::Token { user, admin, .. } => {
            let user = user.ok_or_else(|| anyhow::anyhow!("--user or --service is required"))?;
            let state = AppState::connect(config).await?;
            let user_id = find_or_create_user(&state, &user).await?;
            let role = if admin { Role::Admin } else { Role::User };
            println!("{}", state.tokens.issue(user_id, role).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        Command::Reconcile => {
            let state = AppState::connect(config).await?;
            let stats = reconciler::run_once(&state).await?;
            println!("{stats:?}");
        }
    }
    Ok(())
}

/// `redeem-gateway keygen --out PATH` (main runs it before reading the config).
pub fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    write_new_key(out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Creates the file (never overwrites: a lost signing key re-mints every
/// token), readable by its owner only.
fn write_new_key(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(crate::auth::keys::generate_pem().as_bytes())?;
    Ok(())
}

async fn find_or_create_user(state: &AppState, name: &str) -> anyhow::Result<i64> {
    let username = crate::auth::routes::Username::parse(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = state.pg.get().await?;
    if let Some(user) = users::find_by_username(&db, username.as_str()).await? {
        return Ok(user.id);
    }
    // "!" is not a valid PHC string: nobody can log in with a password.
    let new = users::NewUser { username: username.as_str(), password_hash: "!", phone: None };
    match users::insert_user(&db, &new).await? {
        Some(id) => {
            eprintln!("created user {} (id {id}) without a password", username.as_str());
            Ok(id)
        }
        None => users::find_by_username(&db, username.as_str())
            .await?
            .map(|u| u.id)
            .ok_or_else(|| anyhow::anyhow!("user vanished")),
    }
}
