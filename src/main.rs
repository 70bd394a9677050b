use clap::Parser;
use redeem_gateway::{cli, config::Config, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Variables already in the environment win over the .env file.
    let _ = dotenvy::dotenv();
    let cli = cli::Cli::parse();
    let config = match Config::from_env() {
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
