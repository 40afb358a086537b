//! ferry-agent binary: flags, logging, then [`ferry_agent::run`].
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // glibc gives each thread that contends for malloc its own arena (up to
    // 8 per core) and rarely hands their free pages back: the sync's
    // short-lived batches (Maglev tables, ops) left the RSS far above the live
    // heap. Two arenas are plenty for a 2-thread runtime plus the sync's
    // scoped workers.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any other thread allocates much.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let args = ferry_agent::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs redirected to files stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if args.log_json {
        fmt.json().init()
    } else {
        fmt.init()
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "ferry-agent starting");
    match ferry_agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
