//! ferry-agent: the node agent's logic. `main.rs` only parses flags and calls
//! [`run`]; everything that decides what goes into the maps is pure and
//! table-tested here (maglev, desired, diff), and the side effects (map I/O,
//! attach, HTTP) sit at the edges (maps, metrics, [`run`]).

pub mod cniconf;
pub mod desired;
pub mod diff;
pub mod maglev;
pub mod maps;
pub mod masq;
pub mod metrics;
pub mod names;
pub mod routing;
pub mod sync;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ferry_datapath::{DatapathConfig, IfacePattern, WatchEvent};
use tracing::{info, warn};

use crate::desired::NodeContext;
use crate::diff::Limits;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Ferry node agent: programs the eBPF service load balancer from a catalog"
)]
pub struct Args {
    /// Where Services, EndpointSlices and Nodes come from.
    #[command(flatten)]
    pub source: ferry_state::SourceArgs,
    /// Write this node's CNI configuration here, from its Node's spec.podCIDRs (needs
    /// --node-name); nothing is written until the Node has a pod CIDR. Empty: never.
    #[arg(long, env = "FERRY_WRITE_CNI_CONF")]
    pub write_cni_conf: Option<PathBuf>,
    /// The pod bridge named in the written CNI configuration.
    #[arg(long, default_value = "ferry0")]
    pub cni_bridge: String,
    /// The pod MTU in the written CNI configuration. Unset: what fits the paths pods
    /// may take (the underlay's MTU, minus the VXLAN overhead in auto and vxlan modes:
    /// 50 bytes, 70 with an IPv6 pod CIDR). Set: used where it fits, lowered where not.
    #[arg(long)]
    pub cni_mtu: Option<u32>,
    /// How other nodes' pod CIDRs are reached: host-gw (a route via the peer's
    /// InternalIP), vxlan (through the ferry.vxlan / ferry.vxlan6 devices), auto (host-gw
    /// for peers on this node's L2 segment, VXLAN for the others), none. Needs
    /// --node-name; routes carry route protocol 70.
    #[arg(long, value_enum, env = "FERRY_ROUTING", default_value = "auto")]
    pub routing: routing::Mode,
    /// VXLAN network identifier of the Ferry tunnels.
    #[arg(long, default_value_t = 1)]
    pub vxlan_vni: u32,
    /// VXLAN UDP port (Flannel's default, not IANA's 4789).
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// The device tunnels and host-gw routes use. Unset: the one holding this node's
    /// InternalIP.
    #[arg(long, env = "FERRY_UNDERLAY_DEV")]
    pub underlay_dev: Option<String>,
    /// Masquerade pod traffic leaving the cluster to the underlay device's address, in
    /// eBPF at its tc egress (replies and their ICMP errors translated back at its
    /// ingress). Needs --node-name: this node's pod CIDRs are the sources.
    #[arg(long, env = "FERRY_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Destinations pods reach with their own source address (ip-masq-agent's
    /// nonMasqueradeCIDRs), comma-separated. Unset: every Node's pod CIDRs. Nodes'
    /// addresses are always exempt.
    #[arg(long, env = "FERRY_NON_MASQUERADE_CIDRS", value_delimiter = ',')]
    pub non_masquerade_cidrs: Option<Vec<ipnetwork::IpNetwork>>,
    /// SNAT ports (and ICMP echo identifiers) masqueraded flows get, MIN-MAX. Outside
    /// the kernel's ephemeral range by default; reserved in ip_local_reserved_ports.
    #[arg(long, default_value_t = masq::PortRange::default())]
    pub masquerade_ports: masq::PortRange,
    /// bpffs directory for the pinned programs, maps and links.
    #[arg(long, default_value = ferry_common::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Where the frontend names file goes (default: /run/ferry/<pin dir, flattened>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// This node's name: endpoints with this nodeName are local (internalTrafficPolicy: Local).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The `service.kubernetes.io/service-proxy-name` value that is this agent's: only
    /// Services labelled with it are programmed. Unset (or empty): every Service without
    /// that label, as kube-proxy. Services labelled `service.kubernetes.io/headless` are
    /// never programmed.
    #[arg(long, env = "FERRY_SERVICE_PROXY_NAME")]
    pub service_proxy_name: Option<String>,
    /// Network namespace (a name under /run/netns or a path) holding the pod veths;
    /// attach work happens there. Default: the agent's own.
    #[arg(long)]
    pub netns: Option<String>,
    /// Which links are pod veths: comma-separated globs (`veth*,fy*`). Unset: attach nothing
    /// (the CNI plugin attaches at pod creation).
    #[arg(long)]
    pub iface_pattern: Option<String>,
    /// cgroup v2 directory the socket LB attaches to (cgroup connect, sendmsg,
    /// recvmsg, getpeername): its host-network processes (and their
    /// descendants') reach Services translated at connect(), with no
    /// per-packet NAT. In a cluster: the node's root cgroup (the cgroup2
    /// mount). Unset: no socket LB, and one an earlier run attached is
    /// detached.
    #[arg(long, env = "FERRY_SOCKET_LB_CGROUP")]
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Slots per Maglev table (prime).
    #[arg(long, default_value_t = ferry_common::DEFAULT_MAGLEV_SIZE)]
    pub maglev_size: u32,
    #[arg(long, default_value_t = ferry_common::DEFAULT_MAX_TABLES)]
    pub max_tables: u32,
    #[arg(long, default_value_t = ferry_common::DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    #[arg(long, default_value_t = ferry_common::DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    #[arg(long, default_value_t = ferry_common::DEFAULT_CT_SIZE)]
    pub ct_size: u32,
    #[arg(long, default_value_t = ferry_common::DEFAULT_AFFINITY_SIZE)]
    pub affinity_size: u32,
    /// Masqueraded flows the NAT maps hold; new flows beyond are dropped (and counted).
    #[arg(long, default_value_t = ferry_common::DEFAULT_NAT_SIZE)]
    pub nat_size: u32,
    /// Listen address for /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9962")]
    pub metrics_addr: SocketAddr,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

impl Args {
    pub fn datapath_config(&self) -> DatapathConfig {
        DatapathConfig {
            maglev_size: self.maglev_size,
            max_tables: self.max_tables,
            max_services: self.max_services,
            max_backends: self.max_backends,
            ct_size: self.ct_size,
            affinity_size: self.affinity_size,
            nat_size: self.nat_size,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            maglev_size: self.maglev_size,
            max_tables: self.max_tables,
            max_services: self.max_services,
            max_backends: self.max_backends,
        }
    }
}

pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// Attaches to matching links (existing and future) from a thread that lives
/// in the node namespace; returns once existing links are attached.
fn start_attach(pin_dir: PathBuf, netns: Option<PathBuf>, pattern: IfacePattern) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
    std::thread::Builder::new().name("ferry-netns".into()).spawn(move || {
        if let Some(path) = &netns {
            let entered =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display())).and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering {}", path.display()))
                });
            if let Err(e) = entered {
                let _ = tx.send(Err(e));
                return;
            }
        }
        let watcher = ferry_datapath::spawn_attach_watcher(pin_dir, pattern, |ev| match ev {
            WatchEvent::Attached { ifname, ifindex } => info!(ifname, ifindex, "attached"),
            WatchEvent::AttachFailed { ifname, ifindex, error } => warn!(ifname, ifindex, %error, "attach failed"),
            WatchEvent::Detached { ifindex } => info!(ifindex, "interface gone"),
        });
        match watcher {
            Ok(w) => {
                let _ = tx.send(Ok(()));
                // The watcher lives as long as the process.
                let _keep = w;
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
    })?;
    rx.recv().context("attach thread ended")?
}

/// The agent: load or adopt the data path, follow the catalog, serve metrics.
/// Returns on SIGINT/SIGTERM, leaving maps, programs and links pinned: the
/// next agent adopts them and traffic never stops.
pub async fn run(args: Args) -> anyhow::Result<()> {
    maglev::validate_size(args.maglev_size)?;
    let source = match args.source.config().map_err(anyhow::Error::msg)? {
        // Absolute, so every file is known by one name (inotify events
        // carry the watched path).
        ferry_state::SourceConfig::YamlDir(dir) => ferry_state::SourceConfig::YamlDir(
            std::fs::canonicalize(&dir).with_context(|| format!("reading {}", dir.display()))?,
        ),
        other => other,
    };
    let cni = match (&args.write_cni_conf, &args.node_name) {
        (Some(path), Some(node)) if !path.as_os_str().is_empty() => Some(cniconf::CniSettings {
            path: path.clone(),
            node_name: node.clone(),
            pin_dir: args.pin_dir.clone(),
            bridge: args.cni_bridge.clone(),
            mtu: routing::pod_mtu(args.routing, None, false, args.cni_mtu),
        }),
        (Some(path), None) if !path.as_os_str().is_empty() => {
            anyhow::bail!("--write-cni-conf needs --node-name (or NODE_NAME): the conflist comes from this node's Node")
        }
        _ => None,
    };
    // The pin dir lives on bpffs; a node without it mounted (no systemd
    // mount unit) gets it here, so the image needs no shell to do it.
    let mounted = ferry_datapath::ensure_bpffs(&args.pin_dir)?;
    if mounted {
        info!(pin_dir = %args.pin_dir.display(), "mounted bpffs");
    }
    // Loading the BPF objects (~0.25 s of verifier time) and reading the
    // catalog (a 10,000-file directory is about as long) do not depend on
    // each other: both run at once, so a cold start is ready sooner.
    let (pin_dir, dp_config) = (args.pin_dir.clone(), args.datapath_config());
    let loading = tokio::task::spawn_blocking(move || ferry_datapath::load_or_adopt(&pin_dir, &dp_config));
    let source = ferry_state::start(source, &ferry_state::Kind::ALL).await.context("starting the catalog source")?;
    let rx = source.snapshots.clone();
    let dp = loading
        .await
        .context("data path loader panicked")?
        .with_context(|| format!("loading the data path under {}", args.pin_dir.display()))?;
    let maps = maps::PinnedMaps::new(dp.maps);
    let programmed = maps.read_programmed(args.limits())?;
    info!(
        adopted = dp.adopted,
        frontends = programmed.frontends.len(),
        backends = programmed.backend_count(),
        links_updated = dp.links_updated,
        "data path ready"
    );
    match &args.socket_lb_cgroup {
        Some(cgroup) => {
            let created = ferry_datapath::attach_cgroup(&args.pin_dir, cgroup)
                .with_context(|| format!("attaching the socket LB to {}", cgroup.display()))?;
            info!(cgroup = %cgroup.display(), created, "socket LB attached");
        }
        None => {
            if ferry_datapath::detach_cgroup(&args.pin_dir)? {
                info!("socket LB detached (no --socket-lb-cgroup)");
            }
        }
    }
    if let Some(pattern) = &args.iface_pattern {
        let pattern = IfacePattern::new(pattern)?;
        start_attach(args.pin_dir.clone(), args.netns.as_deref().map(netns_path), pattern)?;
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(|| names::default_state_dir(&args.pin_dir));
    let names_file = names::names_path(&state_dir);
    let collector = metrics::MapCollector::new(ferry_datapath::open_pinned(&args.pin_dir)?, names_file.clone());
    let mut metrics = metrics::Metrics::new(Some(collector), Some(source.status.clone()));
    // Routing follows this node's Node: without a name there is nothing to
    // route from. The conflist waits for the MTU it computes.
    let (mtu_tx, mtu_rx) = tokio::sync::watch::channel(None);
    let node_name = args.node_name.as_ref().filter(|n| !n.is_empty());
    let masquerade = match (args.masquerade, node_name) {
        (true, Some(_)) => {
            let shared = Arc::new(masq::Shared::default());
            metrics.set_masquerade(shared.clone(), args.pin_dir.clone());
            masq::spawn_expiry(args.pin_dir.clone(), args.nat_size, shared.clone())?;
            let cfg = masq::Config {
                pin_dir: args.pin_dir.clone(),
                non_masquerade: args.non_masquerade_cidrs.clone(),
                ports: args.masquerade_ports,
            };
            Some((cfg, shared))
        }
        _ => {
            let removed = masq::disable(&args.pin_dir)?;
            if removed > 0 {
                info!(uplinks = removed, "masquerade turned off");
            }
            None
        }
    };
    if let Some(node) = node_name {
        let shared = Arc::new(routing::task::Shared::default());
        metrics.set_routing(shared.clone());
        let settings = routing::task::Settings {
            config: routing::Config {
                mode: args.routing,
                vni: args.vxlan_vni,
                port: args.vxlan_port,
                underlay_dev: args.underlay_dev.clone(),
            },
            node_name: node.clone(),
            netns: args.netns.as_deref().map(netns_path),
            cni_mtu: args.cni_mtu,
            masquerade,
        };
        // The thread lives as long as the process.
        routing::task::spawn(settings, source.snapshots.clone(), shared, mtu_tx)?;
    }
    let metrics = Arc::new(metrics);
    let server = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone()));

    let node = NodeContext {
        node_name: args.node_name.clone(),
        service_proxy_name: args.service_proxy_name.clone(),
        zone: None, // from the Node object, at each sync
    };
    if let Some(cni) = cni {
        tokio::spawn(cniconf::follow(source.snapshots.clone(), cni, mtu_rx));
    }
    let rec = sync::Reconciler::new(node, programmed);
    let sync_task = tokio::spawn(sync::run_loop(rx, rec, maps, metrics, names_file));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
        r = server => anyhow::bail!("metrics server ended: {r:?}"),
        _ = sync_task => anyhow::bail!("sync loop ended"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// `--service-proxy-name` reaches the translation's context, and the
    /// DaemonSet can set it through `FERRY_SERVICE_PROXY_NAME` instead.
    #[test]
    fn service_proxy_name_flag_and_env() {
        let args = Args::try_parse_from(["ferry-agent", "--yaml-dir", "d", "--service-proxy-name", "ferry"]).unwrap();
        assert!(matches!(args.source.config(), Ok(ferry_state::SourceConfig::YamlDir(_))));
        assert_eq!(args.service_proxy_name.as_deref(), Some("ferry"));
        let cmd = Args::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "service_proxy_name").expect("the flag");
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some("FERRY_SERVICE_PROXY_NAME"));
    }
}
