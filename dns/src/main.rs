//! ferry-dns: parse flags, start logging, load the catalog source, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ferry_dns::answer::Shared;
use ferry_dns::forward::{read_resolv_conf, Forwarder};
use ferry_dns::metrics::{serve_http, Metrics};
use ferry_dns::server::{bind, follow_catalog, serve, worker_count, Limits};
use ferry_dns::zone::ZoneConfig;
use ferry_state::Kind;

/// Cluster DNS for Ferry: the Kubernetes DNS specification's records for
/// the cluster zone, from a YAML directory (or a one-shot fixture), and
/// every other name forwarded to the upstream resolvers.
#[derive(Parser, Debug)]
#[command(name = "ferry-dns", version)]
struct Args {
    /// Address for both the UDP and the TCP listener (port 0: any free port,
    /// printed on stdout).
    #[arg(long, default_value = "0.0.0.0:53", env = "FERRY_DNS_LISTEN")]
    listen: SocketAddr,
    /// Address of the HTTP endpoint for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9153")]
    metrics_addr: SocketAddr,
    /// Where Services and EndpointSlices come from.
    #[command(flatten)]
    source: ferry_state::SourceArgs,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// TTL of cluster records, and of negative answers (seconds).
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Upstream resolver (ip or ip:port), repeatable; replaces resolv.conf.
    #[arg(long)]
    upstream: Vec<String>,
    /// resolv.conf whose nameservers are the upstreams when --upstream is not given.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Answer a-b-c-d.<ns>.pod.<zone> for any address (CoreDNS "pods insecure").
    #[arg(long)]
    pods_insecure: bool,
    /// Log every query (name, type, rcode, transport) at info level.
    #[arg(long)]
    query_log: bool,
    /// Concurrent TCP connections; more are closed at once.
    #[arg(long, default_value_t = 256)]
    tcp_max_connections: usize,
    /// Seconds a TCP connection may sit idle (or trickle one message).
    #[arg(long, default_value_t = 10)]
    tcp_idle_timeout: u64,
    /// UDP worker threads (0: one per CPU the process may run on).
    #[arg(long, default_value_t = 0)]
    udp_workers: usize,
    /// Microseconds a busy UDP worker lets queries gather before its next
    /// receive, so each system call and each send carries more of them
    /// (like a NIC's interrupt coalescing). It only applies once a receive
    /// returns several queries; 0 turns it off.
    #[arg(long, default_value_t = 50, env = "FERRY_DNS_UDP_COALESCE_US", value_parser = clap::value_parser!(u64).range(0..=1000))]
    udp_coalesce_us: u64,
    /// Per-upstream timeout in milliseconds.
    #[arg(long, default_value_t = 2000)]
    upstream_timeout_ms: u64,
    /// Entries in the forwarding cache.
    #[arg(long, default_value_t = 10000)]
    cache_size: usize,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn parse_upstream(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s.parse().with_context(|| format!("--upstream {s:?}: not an ip or ip:port"))?;
    Ok(SocketAddr::new(ip, 53))
}

/// Copies the source's status into the channel the metrics were built with
/// (they exist before the source starts, so probes answer meanwhile).
async fn forward_status(
    mut from: tokio::sync::watch::Receiver<ferry_state::SourceStatus>,
    to: tokio::sync::watch::Sender<ferry_state::SourceStatus>,
) {
    loop {
        to.send_replace(from.borrow_and_update().clone());
        if from.changed().await.is_err() {
            return;
        }
    }
}

fn main() -> anyhow::Result<()> {
    // One malloc arena for every thread: the zone is built on a blocking
    // thread, and with per-thread arenas it could not reuse the memory the
    // catalog's parsing freed on another — the resident size would carry
    // both. The hot path does not allocate, so there is no contention.
    // SAFETY: mallopt only adjusts allocator tuning before threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    if args.ttl == 0 {
        bail!("--ttl must be at least 1 second");
    }
    let mut upstreams = if args.upstream.is_empty() {
        read_resolv_conf(&args.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no upstreams from resolv.conf: names outside the cluster get SERVFAIL");
            Vec::new()
        })
    } else {
        args.upstream.iter().map(|s| parse_upstream(s)).collect::<anyhow::Result<_>>()?
    };
    let limits = Limits {
        tcp_max_connections: args.tcp_max_connections.max(1),
        tcp_idle: Duration::from_secs(args.tcp_idle_timeout.max(1)),
        udp_workers: args.udp_workers,
        udp_coalesce: Duration::from_micros(args.udp_coalesce_us),
    };
    let (udp, tcp) = bind(args.listen, worker_count(&limits))?;
    let local = udp[0].local_addr()?;
    // Forwarding to ourselves would loop until every query times out.
    upstreams.retain(|u| *u != local);
    let zone_config = ZoneConfig { zone: args.zone.clone(), ttl: args.ttl, pods_insecure: args.pods_insecure };
    let source_config = args.source.config().map_err(anyhow::Error::msg)?;
    let (status_tx, status_rx) = tokio::sync::watch::channel(ferry_state::SourceStatus::default());
    let metrics = Metrics::with_source(Some(status_rx));
    let forwarder = Forwarder::new(
        upstreams.clone(),
        Duration::from_millis(args.upstream_timeout_ms),
        args.cache_size.max(1),
        metrics.clone(),
    );
    let shared = Arc::new(Shared::new(zone_config, metrics.clone(), forwarder, args.query_log)?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let http = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .with_context(|| format!("binding metrics address {}", args.metrics_addr))?;
        let http_addr = http.local_addr()?;
        tokio::spawn(serve_http(http, metrics));
        let source = ferry_state::start(source_config, &[Kind::Service, Kind::EndpointSlice])
            .await
            .context("starting the catalog source")?;
        // /status and the metrics follow the source's own status channel.
        tokio::spawn(forward_status(source.status.clone(), status_tx));
        let rx = source.snapshots.clone();
        // The first zone is built before the listeners start, so a source
        // that is ready at start is answered from the first query on.
        let first = rx.borrow().clone();
        let mut built = None;
        let mut cache = ferry_dns::zone::ZoneCache::new(shared.zone_config.clone());
        if first.ready {
            let zone = cache.build(&first.catalog)?;
            shared.set_zone(Arc::new(zone));
            built = Some(first.generation);
            ferry_dns::server::release_freed_memory();
        }
        drop(first);
        tokio::spawn(follow_catalog(shared.clone(), rx, built, cache));
        tracing::info!(listen = %local, metrics = %http_addr, zone = %args.zone, ?upstreams, "ferry-dns started");
        println!("ferry-dns listening on {local} metrics on {http_addr}");
        serve(shared, udp, tcp, limits).await?;
        drop(source);
        Ok(())
    })
}
