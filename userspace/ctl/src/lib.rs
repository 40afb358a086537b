//! ferryctl: what the data path holds, read straight from the pinned maps
//! (so it works while the agent is down), as a table or JSON.
#![forbid(unsafe_code)]

pub mod render;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use aya::maps::MapData;
use ferry_agent::diff::{backend_addr, frontend_of, ip_of, protocol_of};
use ferry_agent::names::{self, Names};
use ferry_common::{backend_state, ct_flags, service_flags, CtKey, DropReason, GlobalCounter};
use ferry_datapath::Maps;
use serde::Serialize;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ferryctl", version, about = "Inspect the Ferry data path on this node")]
pub struct Cli {
    /// bpffs directory the agent pinned its maps under.
    #[arg(long, global = true, default_value = ferry_common::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The agent's state dir (frontend names); default derived from --pin-dir.
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Services (frontends) and their backends.
    Service {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Backends of every frontend.
    Backend {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Conntrack entries of load-balanced flows.
    Conntrack {
        #[command(subcommand)]
        cmd: CtCmd,
    },
    /// Masqueraded flows: pod -> node address and SNAT port -> remote.
    Nat {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Per-service packet/byte counters, drops by reason, global counters.
    Stats,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ListOnly {
    List,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtCmd {
    List(CtFilter),
    /// Delete matching entries (all of them without a filter).
    Flush(CtFilter),
}

/// Matches a flow if every given field matches.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CtFilter {
    /// `namespace/name` of the Service.
    #[arg(long)]
    pub service: Option<String>,
    /// Client, VIP or backend address.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// Client, VIP or backend port.
    #[arg(long)]
    pub port: Option<u16>,
    /// tcp, udp or sctp.
    #[arg(long)]
    pub proto: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Datapath(#[from] ferry_datapath::Error),
    #[error("reading {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceRow {
    pub id: u32,
    pub service: String,
    pub port_name: String,
    pub frontend: String,
    pub proto: String,
    pub active: u32,
    pub backends: usize,
    pub maglev_table: Option<u32>,
    pub affinity_timeout_s: Option<u32>,
    pub local_only: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendRow {
    pub id: u32,
    pub service_id: u32,
    pub service: String,
    pub address: String,
    pub proto: String,
    pub state: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CtRow {
    pub proto: String,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    pub service: String,
    pub backend_id: u32,
    pub flags: Vec<&'static str>,
    pub age_s: f64,
    pub idle_s: f64,
    #[serde(skip)]
    pub key: CtKey,
    #[serde(skip)]
    pub ips: [Option<IpAddr>; 3],
    #[serde(skip)]
    pub ports: [u16; 3],
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub services: Vec<ServiceStats>,
    pub drops: BTreeMap<&'static str, u64>,
    pub global: BTreeMap<&'static str, u64>,
    pub conntrack_entries: usize,
    pub nat_entries: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStats {
    pub id: u32,
    pub service: String,
    pub frontend: String,
    pub packets: u64,
    pub bytes: u64,
}

pub struct Node {
    pub maps: Maps,
    pub names: Names,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> CtlError {
    move |source| CtlError::Map { map, source }
}

fn fmt_addr(ip: Option<IpAddr>, port: u16) -> String {
    match ip {
        Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => format!("?:{port}"),
    }
}

fn proto_name(p: u8) -> String {
    protocol_of(p).map_or_else(|| p.to_string(), |p| p.as_str().to_string())
}

impl Node {
    pub fn open(cli: &Cli) -> Result<Self, CtlError> {
        let maps = ferry_datapath::open_pinned(&cli.pin_dir)?;
        let state = cli.state_dir.clone().unwrap_or_else(|| names::default_state_dir(&cli.pin_dir));
        Ok(Self { maps, names: names::read(&names::names_path(&state)) })
    }

    fn name_of(&self, id: u32) -> (String, String) {
        self.names
            .get(&id)
            .map(|n| (n.service.clone(), n.port_name.clone()))
            .unwrap_or_else(|| (format!("id:{id}"), String::new()))
    }

    pub fn services(&self) -> Result<Vec<ServiceRow>, CtlError> {
        let mut totals: BTreeMap<u32, usize> = BTreeMap::new();
        for r in self.maps.backends.iter() {
            let (_, b) = r.map_err(map_err("backends"))?;
            *totals.entry(b.service_id).or_default() += 1;
        }
        let mut rows = Vec::new();
        for r in self.maps.services.iter() {
            let (k, v) = r.map_err(map_err("services"))?;
            let (service, port_name) = self.name_of(v.id);
            let fe = frontend_of(&k);
            rows.push(ServiceRow {
                id: v.id,
                service,
                port_name,
                frontend: fe.map_or_else(|| "?".into(), |f| fmt_addr(Some(f.vip), f.port)),
                proto: proto_name(k.proto),
                active: v.backend_count,
                backends: totals.get(&v.id).copied().unwrap_or(0),
                maglev_table: (v.backend_count > 0).then_some(v.maglev_table),
                affinity_timeout_s: (v.flags & service_flags::AFFINITY != 0).then_some(v.affinity_timeout_s),
                local_only: v.flags & service_flags::LOCAL_ONLY != 0,
            });
        }
        rows.sort_by(|a, b| (&a.service, &a.frontend, &a.proto).cmp(&(&b.service, &b.frontend, &b.proto)));
        Ok(rows)
    }

    pub fn backends(&self) -> Result<Vec<BackendRow>, CtlError> {
        let mut rows = Vec::new();
        for r in self.maps.backends.iter() {
            let (id, b) = r.map_err(map_err("backends"))?;
            let addr = backend_addr(&b);
            rows.push(BackendRow {
                id,
                service_id: b.service_id,
                service: self.name_of(b.service_id).0,
                address: addr.map_or_else(|| "?".into(), |a| a.to_string()),
                proto: proto_name(b.proto),
                state: if b.state == backend_state::ACTIVE { "active" } else { "terminating" },
            });
        }
        rows.sort_by(|a, b| (&a.service, a.id).cmp(&(&b.service, b.id)));
        Ok(rows)
    }

    pub fn conntrack(&self, filter: &CtFilter) -> Result<Vec<CtRow>, CtlError> {
        let now = monotonic_ns();
        let mut rows = Vec::new();
        for r in self.maps.conntrack.iter() {
            // LRU entries can vanish between key and value reads.
            let Ok((k, v)) = r else { continue };
            let client = ip_of(&k.src_addr, k.family);
            let vip = ip_of(&k.dst_addr, k.family);
            let backend = ip_of(&v.backend_addr, k.family);
            let (sport, dport, bport) =
                (u16::from_be(k.src_port), u16::from_be(k.dst_port), u16::from_be(v.backend_port));
            let mut flags = Vec::new();
            for (bit, name) in [
                (ct_flags::SEEN_REPLY, "seen_reply"),
                (ct_flags::FIN_SEEN, "fin"),
                (ct_flags::RST_SEEN, "rst"),
                (ct_flags::HAIRPIN, "hairpin"),
            ] {
                if v.flags & bit != 0 {
                    flags.push(name);
                }
            }
            let row = CtRow {
                proto: proto_name(k.proto),
                client: fmt_addr(client, sport),
                frontend: fmt_addr(vip, dport),
                backend: fmt_addr(backend, bport),
                service: self.name_of(v.service_id).0,
                backend_id: v.backend_id,
                flags,
                age_s: now.saturating_sub(v.created_ns) as f64 / 1e9,
                idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
                key: k,
                ips: [client, vip, backend],
                ports: [sport, dport, bport],
            };
            if filter.matches(&row) {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
        Ok(rows)
    }

    /// Deletes the matching entries (and their reverse-NAT twins); returns how many.
    pub fn flush(&mut self, filter: &CtFilter) -> Result<usize, CtlError> {
        let rows = self.conntrack(filter)?;
        let mut n = 0;
        for row in &rows {
            if self.maps.conntrack.remove(&row.key).is_ok() {
                n += 1;
            }
        }
        // Reverse-NAT entries whose forward flow is gone only cost memory
        // (LRU), but drop those of flushed flows so replies are not rewritten.
        let flushed: std::collections::HashSet<(Option<IpAddr>, u16, Option<IpAddr>, u16)> =
            rows.iter().map(|r| (r.ips[2], r.ports[2], r.ips[0], r.ports[0])).collect();
        let stale: Vec<_> = self
            .maps
            .revnat
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                flushed.contains(&(
                    ip_of(&k.src_addr, k.family),
                    u16::from_be(k.src_port),
                    ip_of(&k.dst_addr, k.family),
                    u16::from_be(k.dst_port),
                ))
            })
            .collect();
        for k in stale {
            let _ = self.maps.revnat.remove(&k);
        }
        Ok(n)
    }

    /// Every masqueraded flow.
    pub fn nat(&self) -> Vec<ferry_datapath::NatFlow> {
        ferry_datapath::list_nat(&self.maps.snat, &self.maps.snat_rev)
    }

    pub fn stats(&self) -> Result<Stats, CtlError> {
        let mut services = Vec::new();
        for r in self.maps.services.iter() {
            let (k, v) = r.map_err(map_err("services"))?;
            let per_cpu = self.maps.service_stats.get(&v.id, 0).map_err(map_err("service stats"))?;
            let (packets, bytes) = per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            let fe = frontend_of(&k);
            services.push(ServiceStats {
                id: v.id,
                service: self.name_of(v.id).0,
                frontend: fe
                    .map_or_else(|| "?".into(), |f| format!("{}/{}", fmt_addr(Some(f.vip), f.port), f.proto.as_str())),
                packets,
                bytes,
            });
        }
        services.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
        let sum = |m: &aya::maps::PerCpuArray<MapData, u64>, i: u32| m.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        let drops = DropReason::ALL.iter().map(|r| (r.as_str(), sum(&self.maps.drops, *r as u32))).collect();
        let global = GlobalCounter::ALL.iter().map(|c| (c.name(), sum(&self.maps.global, *c as u32))).collect();
        let conntrack_entries = self.maps.conntrack.keys().filter(Result::is_ok).count();
        let nat_entries = self.maps.snat.keys().filter(Result::is_ok).count();
        Ok(Stats { services, drops, global, conntrack_entries, nat_entries })
    }
}

impl CtFilter {
    pub fn matches(&self, row: &CtRow) -> bool {
        if let Some(s) = &self.service {
            if &row.service != s {
                return false;
            }
        }
        if let Some(ip) = &self.ip {
            if !row.ips.contains(&Some(*ip)) {
                return false;
            }
        }
        if let Some(p) = self.port {
            if !row.ports.contains(&p) {
                return false;
            }
        }
        if let Some(p) = &self.proto {
            if !row.proto.eq_ignore_ascii_case(p) {
                return false;
            }
        }
        true
    }
}

/// `bpf_ktime_get_ns()`'s clock, so ages can be computed.
use ferry_datapath::monotonic_ns;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(service: &str, client: &str, cport: u16, proto: &str) -> CtRow {
        let c: IpAddr = client.parse().unwrap();
        CtRow {
            proto: proto.into(),
            client: fmt_addr(Some(c), cport),
            frontend: "10.96.0.10:80".into(),
            backend: "10.244.0.2:8080".into(),
            service: service.into(),
            backend_id: 0,
            flags: vec![],
            age_s: 0.0,
            idle_s: 0.0,
            key: CtKey::default(),
            ips: [Some(c), Some("10.96.0.10".parse().unwrap()), Some("10.244.0.2".parse().unwrap())],
            ports: [cport, 80, 8080],
        }
    }

    #[test]
    fn filters() {
        let r = row("default/web", "10.244.0.9", 40000, "tcp");
        let f = |service: Option<&str>, ip: Option<&str>, port: Option<u16>, proto: Option<&str>| CtFilter {
            service: service.map(Into::into),
            ip: ip.map(|s| s.parse().unwrap()),
            port,
            proto: proto.map(Into::into),
        };
        // (filter, matches)
        let cases = [
            (f(None, None, None, None), true),                // no filter: everything
            (f(Some("default/web"), None, None, None), true), // by service
            (f(Some("default/db"), None, None, None), false),
            (f(None, Some("10.244.0.9"), None, None), true), // client address
            (f(None, Some("10.96.0.10"), None, None), true), // VIP
            (f(None, Some("10.244.0.2"), None, None), true), // backend
            (f(None, Some("10.244.0.7"), None, None), false),
            (f(None, None, Some(8080), None), true), // backend port
            (f(None, None, Some(53), None), false),
            (f(None, None, None, Some("TCP")), true), // case-insensitive
            (f(None, None, None, Some("udp")), false),
            (f(Some("default/web"), None, Some(53), None), false), // all must hold
        ];
        for (i, (filter, want)) in cases.iter().enumerate() {
            assert_eq!(filter.matches(&r), *want, "case {i}: {filter:?}");
        }
    }
}
