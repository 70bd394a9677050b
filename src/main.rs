use clap::Parser;
use redeem_gateway::{cli, config::Config, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Variables already in the environment win over the .env file.
    let _ = dotenvy::dotenv();
    let cli = cli::Cli::parse();
    // Needs no configuration: it only writes a key file.
    if let cli::Command::Keygen { out } = &cli.command {
        return match cli::keygen(out) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match cli.role() {
        Some(role) => Config::from_env_with_role(role),
        None => Config::from_env(),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    match cli::run(cli, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
