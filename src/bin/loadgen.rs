//! `loadgen`: the Redeem Gateway's load generator and benchmark driver.
//! Fixtures are made through the library with the gateway's own configuration
//! (same DATABASE_URL, REDIS_KEY_PREFIX and JWT_SECRET, from the environment
//! or .env); the load goes over HTTP to `--gateway`. See README "Benchmark".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use redeem_gateway::config::Config;
use redeem_gateway::loadgen::report::{self, Ceilings, Meta};
use redeem_gateway::loadgen::{ceiling, pgbench, scenarios, setup, Bench, Outcome};
use redeem_gateway::{db, startup::AppState};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator and benchmark for Redeem Gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One code with limit L; U distinct users fire once, all at once; invariants checked.
    Burst(Load),
    /// A sold-out code hammered by distinct users for --duration seconds.
    Flood(Load),
    /// POST /wallet/balance by random users for --duration seconds.
    Balance(Load),
    /// A burst on half the connections while the other half sends balance and sold-out traffic.
    Mixed(Load),
    /// Every scenario (and the HTTP ceiling with --ceiling), then the markdown report.
    All(AllArgs),
    /// The trivial HTTP ceiling server (parses {"code"}, answers 410 JSON).
    CeilingServer {
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: String,
        /// actix workers; default HTTP_WORKERS, where 0 means one per CPU (as the gateway).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Prints a pgbench script: the gateway's COMMIT_SQL (default), its group
    /// commit statement (--batch ROWS), or its balance query (--last-user).
    PgbenchScript {
        #[arg(long, default_value_t = 0)]
        code_id: i64,
        /// Id of the first of the consecutive users the transactions use.
        #[arg(long)]
        first_user: i64,
        /// Rows per statement: the group commit's statement instead.
        #[arg(long)]
        batch: Option<i64>,
        /// The balance query for random users first_user..=last_user instead.
        #[arg(long)]
        last_user: Option<i64>,
    },
    /// Fixtures for an outside load generator (wrk): a sold-out code and
    /// --users tokens, written to DIR/code and DIR/tokens (one per line).
    WrkFixtures {
        #[arg(long, default_value_t = 20_000)]
        users: usize,
        #[arg(long)]
        dir: PathBuf,
        /// The gateway's host:port, to take the sold-out code's one slot.
        #[arg(long)]
        gateway: String,
    },
}

#[derive(Args, Clone)]
struct Load {
    /// The gateway's host:port (default: HTTP_ADDR).
    #[arg(long)]
    gateway: Option<String>,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// The gateway's process id, for its peak memory (VmHWM).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Distinct users (U).
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// The burst code's limit (L).
    #[arg(long, default_value_t = 1_000)]
    limit: i64,
    /// The burst code's amount per redemption.
    #[arg(long, default_value_t = 1_000_000)]
    amount: i64,
    /// Seconds of flood and balance load (T).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

#[derive(Args)]
struct AllArgs {
    #[command(flatten)]
    load: Load,
    /// The ceiling server's host:port; without it the HTTP ceiling is not measured.
    #[arg(long)]
    ceiling: Option<String>,
    /// redis-benchmark's claim-script rate (per second), measured by the caller.
    #[arg(long)]
    redis_ceiling: Option<f64>,
    /// pgbench's commit rate (transactions per second), measured by the caller.
    #[arg(long)]
    pg_ceiling: Option<f64>,
    /// pgbench running the group commit's statement: credits per second.
    #[arg(long)]
    pg_batch_ceiling: Option<f64>,
    /// pgbench running the balance query: queries per second.
    #[arg(long)]
    pg_balance_ceiling: Option<f64>,
    /// wrk's rate on the sold-out code against the gateway (requests per second).
    #[arg(long)]
    wrk_flood: Option<f64>,
    /// wrk's rate, same script, against the trivial ceiling server.
    #[arg(long)]
    wrk_ceiling: Option<f64>,
    /// Where to write the markdown report (it is printed too).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The git commit to name in the report.
    #[arg(long, default_value = "unknown")]
    commit: String,
    /// Extra `name=value` parameters for the report.
    #[arg(long = "param")]
    params: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    match run(Cli::parse().command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadgen: INVARIANTS BROKEN (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one command; `Ok(false)` when an invariant broke.
async fn run(command: Command) -> anyhow::Result<bool> {
    if let Command::CeilingServer { addr, workers } = &command {
        ceiling::serve(addr, workers.unwrap_or_else(gateway_workers)).await?;
        return Ok(true);
    }
    if let Command::PgbenchScript { code_id, first_user, batch, last_user } = &command {
        let script = match (batch, last_user) {
            (_, Some(last)) => pgbench::balance_script(*first_user, *last),
            (Some(rows), None) => pgbench::batch_script(*code_id, *first_user, *rows),
            (None, None) => pgbench::script(*code_id, *first_user),
        };
        print!("{script}");
        return Ok(true);
    }
    let config = Config::from_env().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    db::migrate(&config).await?;
    let state = AppState::connect(config).await?;
    let outcomes = match command {
        Command::Burst(load) => one(&state, &load, Scenario::Burst).await?,
        Command::Flood(load) => one(&state, &load, Scenario::Flood).await?,
        Command::Balance(load) => one(&state, &load, Scenario::Balance).await?,
        Command::Mixed(load) => one(&state, &load, Scenario::Mixed).await?,
        Command::All(args) => return all(&state, args).await,
        Command::WrkFixtures { users, dir, gateway } => {
            let users = prepare_users(&state, users).await?;
            let code = scenarios::sold_out_code(&state, parse_addr(&gateway)?).await?;
            let tokens: Vec<&str> = users.auth.iter().filter_map(|h| h.to_str().ok()).collect();
            std::fs::write(dir.join("tokens"), tokens.join("\n") + "\n")?;
            std::fs::write(dir.join("code"), &code)?;
            return Ok(true);
        }
        Command::CeilingServer { .. } | Command::PgbenchScript { .. } => Vec::new(),
    };
    println!("{}", report::markdown(&meta(&state, "unknown", &[]), &outcomes, &Ceilings::default()));
    Ok(outcomes.iter().all(Outcome::invariants_hold))
}

#[derive(Clone, Copy)]
enum Scenario {
    Burst,
    Flood,
    Balance,
    Mixed,
}

async fn one(state: &Arc<AppState>, load: &Load, scenario: Scenario) -> anyhow::Result<Vec<Outcome>> {
    let bench = bench(state, load)?;
    let users = prepare_users(state, load.users).await?;
    run_scenario(&bench, &users, load, scenario).await
}

async fn run_scenario(
    bench: &Bench,
    users: &setup::Users,
    load: &Load,
    scenario: Scenario,
) -> anyhow::Result<Vec<Outcome>> {
    let duration = Duration::from_secs(load.duration);
    eprintln!("loadgen: {} ...", scenario_name(scenario));
    let outcomes = match scenario {
        Scenario::Burst => vec![scenarios::burst(bench, users, load.limit, load.amount).await?],
        Scenario::Flood => vec![scenarios::flood(bench, users, duration).await?],
        Scenario::Balance => vec![scenarios::balance(bench, users, duration).await?],
        Scenario::Mixed => scenarios::mixed(bench, users, load.limit, load.amount).await?,
    };
    for o in &outcomes {
        report_invariants(o);
    }
    Ok(outcomes)
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Burst => "burst",
        Scenario::Flood => "flood",
        Scenario::Balance => "balance",
        Scenario::Mixed => "mixed",
    }
}

fn report_invariants(outcome: &Outcome) {
    let s = &outcome.summary;
    eprintln!(
        "loadgen: {}: {} requests, {:.0} req/s, {} x 200, {:.0} 200/s, p99 {:?}, statuses {}",
        outcome.name,
        s.requests,
        s.requests_per_sec(),
        s.successes,
        s.successes_per_sec(),
        s.p99,
        s.statuses_text()
    );
    if let Some(inv) = &outcome.invariants {
        for failure in &inv.failures {
            eprintln!("loadgen: INVARIANT BROKEN in {}: {failure}", outcome.name);
        }
    }
}

async fn all(state: &Arc<AppState>, args: AllArgs) -> anyhow::Result<bool> {
    let load = &args.load;
    let bench = bench(state, load)?;
    let users = prepare_users(state, load.users).await?;
    let http = match &args.ceiling {
        Some(addr) => {
            eprintln!("loadgen: HTTP ceiling ...");
            let ceiling = parse_addr(addr)?;
            Some(scenarios::http_ceiling(ceiling, load.connections, &users, Duration::from_secs(load.duration)).await?)
        }
        None => None,
    };
    let mut outcomes = Vec::new();
    for scenario in [Scenario::Burst, Scenario::Flood, Scenario::Balance, Scenario::Mixed] {
        outcomes.extend(run_scenario(&bench, &users, load, scenario).await?);
    }
    let ceilings = Ceilings {
        http,
        redis_per_sec: args.redis_ceiling,
        pg_per_sec: args.pg_ceiling,
        pg_batch_per_sec: args.pg_batch_ceiling,
        pg_balance_per_sec: args.pg_balance_ceiling,
        wrk_flood_per_sec: args.wrk_flood,
        wrk_ceiling_per_sec: args.wrk_ceiling,
    };
    let markdown = report::markdown(&meta(state, &args.commit, &params(load, &args.params)), &outcomes, &ceilings);
    println!("{markdown}");
    if let Some(path) = &args.out {
        std::fs::write(path, &markdown)?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    Ok(outcomes.iter().all(Outcome::invariants_hold))
}

fn bench(state: &Arc<AppState>, load: &Load) -> anyhow::Result<Bench> {
    let gateway = parse_addr(load.gateway.as_deref().unwrap_or(&state.config.http_addr))?;
    Ok(Bench { state: state.clone(), gateway, connections: load.connections, gateway_pid: load.gateway_pid })
}

async fn prepare_users(state: &AppState, n: usize) -> anyhow::Result<setup::Users> {
    let started = std::time::Instant::now();
    let users = setup::create_users(state, n).await?;
    eprintln!("loadgen: {} users and tokens ready in {:?}", users.len(), started.elapsed());
    Ok(users)
}

/// `host:port`, with or without `http://`.
fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let bare = s.trim_start_matches("http://").trim_end_matches('/');
    bare.parse().map_err(|e| anyhow::anyhow!("not a host:port address: {s}: {e}"))
}

fn gateway_workers() -> usize {
    let configured = std::env::var("HTTP_WORKERS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    match configured {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

fn meta(state: &AppState, commit: &str, extra: &[(String, String)]) -> Meta {
    let mut parameters = vec![
        ("gateway HTTP workers".to_string(), gateway_workers().to_string()),
        ("PG_POOL_SIZE".to_string(), state.config.pg_pool_size.to_string()),
        ("REDIS_KEY_PREFIX".to_string(), state.config.redis_key_prefix.clone()),
    ];
    parameters.extend(extra.iter().cloned());
    Meta {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        commit: commit.to_string(),
        parameters,
    }
}

fn params(load: &Load, extra: &[String]) -> Vec<(String, String)> {
    let mut out = vec![
        ("connections".to_string(), load.connections.to_string()),
        ("users (U)".to_string(), load.users.to_string()),
        ("burst limit (L)".to_string(), load.limit.to_string()),
        ("amount".to_string(), load.amount.to_string()),
        ("duration (T)".to_string(), format!("{} s", load.duration)),
    ];
    for p in extra {
        let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
        out.push((k.to_string(), v.to_string()));
    }
    out
}
