//! ferry-agent binary: flags, logging, then [`ferry_agent::run`].
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = ferry_agent::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json { fmt.json().init() } else { fmt.init() }
    match ferry_agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
