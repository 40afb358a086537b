//! Loading, adopting and opening the pinned data path.
use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{
        links::FdLink, links::PinnedLink, tc::SchedClassifierLink, CgroupSock, CgroupSockAddr, Program,
        SchedClassifier, TestRun, TestRunOptions,
    },
    EbpfLoader,
};
use ferry_common::{
    map_names, AffinityKey, AffinityValue, BackendValue, Config, Counter, CtKey, CtValue, DropReason, EndpointKey,
    EndpointValue, GlobalCounter, LpmAddr, MasqIface, NatEntry, NatKey, RevNatKey, RevNatValue, ServiceKey,
    ServiceValue,
};
use tracing::{debug, info, warn};

use crate::{
    io_err,
    maglev::MaglevTables,
    prog::{cgroup_link_path, link_pins, map_pin, Hook, Prog, PIN_SUBDIRS},
    Error, Result, ELF,
};

/// Capacities of the maps. They are fixed when a map is first created and
/// pinned; adopting pins created with other sizes is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Slots per Maglev table (a prime, see ferry-common).
    pub maglev_size: u32,
    /// Number of Maglev tables (`FERRY_MAGLEV` holds `max_tables * maglev_size`).
    pub max_tables: u32,
    pub max_services: u32,
    pub max_backends: u32,
    /// Conntrack and reverse-NAT entries (LRU).
    pub ct_size: u32,
    pub affinity_size: u32,
    /// Masqueraded flows (`FERRY_SNAT`, and as many `FERRY_SNAT_REV`).
    pub nat_size: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            maglev_size: ferry_common::DEFAULT_MAGLEV_SIZE,
            max_tables: ferry_common::DEFAULT_MAX_TABLES,
            max_services: ferry_common::DEFAULT_MAX_SERVICES,
            max_backends: ferry_common::DEFAULT_MAX_BACKENDS,
            ct_size: ferry_common::DEFAULT_CT_SIZE,
            affinity_size: ferry_common::DEFAULT_AFFINITY_SIZE,
            nat_size: ferry_common::DEFAULT_NAT_SIZE,
        }
    }
}

impl DatapathConfig {
    /// Small maps for tests: a few MB instead of ~100 MB.
    pub fn small() -> Self {
        Self {
            maglev_size: 251,
            max_tables: 64,
            max_services: 1024,
            max_backends: 4096,
            ct_size: 16_384,
            affinity_size: 1024,
            nat_size: 16_384,
        }
    }

    fn validate(&self) -> Result<()> {
        let fields = [
            ("maglev_size", self.maglev_size),
            ("max_tables", self.max_tables),
            ("max_services", self.max_services),
            ("max_backends", self.max_backends),
            ("ct_size", self.ct_size),
            ("affinity_size", self.affinity_size),
            ("nat_size", self.nat_size),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be > 0")));
        }
        self.maglev_slots()?;
        Ok(())
    }

    fn maglev_slots(&self) -> Result<u32> {
        self.max_tables.checked_mul(self.maglev_size).ok_or_else(|| {
            Error::Config(format!(
                "max_tables ({}) x maglev_size ({}) overflows u32",
                self.max_tables, self.maglev_size
            ))
        })
    }

    /// `max_entries` of every map, by name.
    fn map_sizes(&self) -> Result<[(&'static str, u32); 21]> {
        Ok([
            (map_names::SERVICES, self.max_services),
            (map_names::BACKENDS, self.max_backends),
            (map_names::MAGLEV, self.maglev_slots()?.div_ceil(ferry_common::MAGLEV_SLOTS_PER_ENTRY)),
            (map_names::CONNTRACK, self.ct_size),
            (map_names::REVNAT, self.ct_size),
            (map_names::AFFINITY, self.affinity_size),
            (map_names::SERVICE_STATS, self.max_services),
            (map_names::DROPS, DropReason::MAX),
            (map_names::GLOBAL_STATS, GlobalCounter::MAX),
            (map_names::CONFIG, 1),
            (map_names::ENDPOINTS, ferry_common::DEFAULT_MAX_ENDPOINTS),
            (map_names::PORTS, ferry_common::DEFAULT_MAX_PORTS),
            (map_names::NEXTHOPS, ferry_common::DEFAULT_MAX_PORTS),
            (map_names::SOCK_REVNAT, self.ct_size),
            (map_names::FRAGMENTS, ferry_common::DEFAULT_FRAG_SIZE),
            (map_names::VIPS, self.max_services),
            (map_names::SNAT, self.nat_size),
            (map_names::SNAT_REV, self.nat_size),
            (map_names::MASQ_SOURCES, ferry_common::DEFAULT_MASQ_CIDRS),
            (map_names::NON_MASQ, ferry_common::DEFAULT_MASQ_CIDRS),
            (map_names::MASQ_IFACES, ferry_common::DEFAULT_MASQ_IFACES),
        ])
    }
}

/// Typed handles on every pinned map. The LRU maps (conntrack, reverse
/// NAT, affinity) are aya `HashMap`s too: the API is the same.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, BackendValue>,
    /// Slot `table * maglev_size + slot` -> backend id.
    pub maglev: MaglevTables,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub revnat: HashMap<MapData, RevNatKey, RevNatValue>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// Per-CPU counters indexed by `ServiceValue::id`.
    pub service_stats: PerCpuArray<MapData, Counter>,
    /// Per-CPU counters indexed by `DropReason as u32`.
    pub drops: PerCpuArray<MapData, u64>,
    /// Per-CPU counters indexed by `ferry_common::GlobalCounter`.
    pub global: PerCpuArray<MapData, u64>,
    /// One entry: the Maglev geometry the programs index with.
    pub config: Array<MapData, Config>,
    /// Local pod address -> (host veth, pod MAC), for `bpf_redirect_peer`;
    /// written by the CNI plugin ([`crate::register_endpoint`]).
    pub endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    /// Every frontend address -> its number of frontends; written by the
    /// agent beside the services (fragments to a VIP are recognised by it).
    pub vips: HashMap<MapData, EndpointKey, u32>,
    /// Masqueraded flows: pod -> remote as the pod sent them -> the node
    /// address and port they leave with (filled by the uplink programs).
    pub snat: HashMap<MapData, NatKey, NatEntry>,
    /// Their replies: remote -> node address and port -> the pod's.
    pub snat_rev: HashMap<MapData, NatKey, NatEntry>,
    /// Sources to masquerade (this node's pod CIDRs), keyed by [`crate::lpm_key`].
    pub masq_sources: LpmTrie<MapData, LpmAddr, u8>,
    /// Destinations that keep the pod's source.
    pub non_masq: LpmTrie<MapData, LpmAddr, u8>,
    /// Uplink ifindex -> its masquerade addresses and port range.
    pub masq_ifaces: HashMap<MapData, u32, MasqIface>,
}

impl Maps {
    /// The Maglev geometry the programs use (`FERRY_CONFIG[0]`).
    pub fn maglev_config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(|source| Error::Map { name: map_names::CONFIG, path: PathBuf::new(), source })
    }

    fn from_source(mut take: impl FnMut(&'static str) -> Result<(Map, PathBuf)>) -> Result<Self> {
        macro_rules! typed {
            ($name:expr) => {{
                let (map, path) = take($name)?;
                map.try_into().map_err(|source| Error::Map { name: $name, path, source })?
            }};
        }
        Ok(Self {
            services: typed!(map_names::SERVICES),
            backends: typed!(map_names::BACKENDS),
            maglev: {
                let (map, path) = take(map_names::MAGLEV)?;
                let map = map.try_into().map_err(|source| Error::Map {
                    name: map_names::MAGLEV,
                    path: path.clone(),
                    source,
                })?;
                MaglevTables::new(map, path)
            },
            conntrack: typed!(map_names::CONNTRACK),
            revnat: typed!(map_names::REVNAT),
            affinity: typed!(map_names::AFFINITY),
            service_stats: typed!(map_names::SERVICE_STATS),
            drops: typed!(map_names::DROPS),
            global: typed!(map_names::GLOBAL_STATS),
            config: typed!(map_names::CONFIG),
            endpoints: typed!(map_names::ENDPOINTS),
            vips: typed!(map_names::VIPS),
            snat: typed!(map_names::SNAT),
            snat_rev: typed!(map_names::SNAT_REV),
            masq_sources: typed!(map_names::MASQ_SOURCES),
            non_masq: typed!(map_names::NON_MASQ),
            masq_ifaces: typed!(map_names::MASQ_IFACES),
        })
    }
}

/// A loaded (or adopted) data path.
pub struct Datapath {
    pub pin_dir: PathBuf,
    /// True when the maps were already pinned (a restart): their state,
    /// conntrack included, was kept.
    pub adopted: bool,
    /// Links whose program was replaced by this load.
    pub links_updated: usize,
    pub maps: Maps,
}

/// Whether the programs are pinned under `pin_dir` (a loader has run).
pub fn programs_pinned(pin_dir: &Path) -> bool {
    Prog::ALL.iter().all(|p| p.pin_path(pin_dir).exists())
}

/// Loads the embedded programs and pins them and their maps under
/// `pin_dir`, adopting what a previous loader left there: pinned maps are
/// reused as they are (so conntrack, services and counters survive an agent
/// restart), and every pinned link is switched to the new program with
/// `bpf_link_update`, so no packet ever sees an interface without a program.
pub fn load_or_adopt(pin_dir: &Path, config: &DatapathConfig) -> Result<Datapath> {
    config.validate()?;
    for sub in PIN_SUBDIRS {
        let dir = pin_dir.join(sub);
        fs::create_dir_all(&dir).map_err(io_err("create", dir))?;
    }
    let sizes = config.map_sizes()?;
    let mut adopted = false;
    for (name, want) in sizes {
        let path = map_pin(pin_dir, name);
        if !path.exists() {
            continue;
        }
        adopted = true;
        let data = MapData::from_pin(&path).map_err(|source| Error::Map { name, path: path.clone(), source })?;
        let found = data.info().map_err(|source| Error::Map { name, path: path.clone(), source })?.max_entries();
        if found != want {
            return Err(Error::MapSizeMismatch { path, found, want });
        }
    }

    let paths: Vec<(&'static str, PathBuf)> = sizes.iter().map(|(n, _)| (*n, map_pin(pin_dir, n))).collect();
    let mut loader = EbpfLoader::new();
    for ((name, size), (_, path)) in sizes.iter().zip(&paths) {
        loader.map_max_entries(name, *size);
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf =
        loader.load(ELF).map_err(|source| Error::Load { pin_dir: pin_dir.to_owned(), source: Box::new(source) })?;

    let mut links_updated = 0;
    for prog in Prog::ALL {
        let name = prog.name();
        let err = |source| Error::Program { name: name.to_owned(), source };
        let program = ebpf.program_mut(name).ok_or_else(|| err(aya::programs::ProgramError::NotLoaded))?;
        match prog.hook() {
            Hook::TcxIngress | Hook::TcxEgress => {
                let program: &mut SchedClassifier = program.try_into().map_err(err)?;
                program.load().map_err(err)?;
                links_updated += replace_in_links(pin_dir, prog, program)?;
            }
            Hook::Cgroup(_) => {
                let program: &mut CgroupSockAddr = program.try_into().map_err(err)?;
                program.load().map_err(err)?;
                links_updated += replace_in_cgroup_link(pin_dir, prog, program.fd().map_err(err)?.as_fd())?;
            }
            Hook::CgroupSock(_) => {
                let program: &mut CgroupSock = program.try_into().map_err(err)?;
                program.load().map_err(err)?;
                links_updated += replace_in_cgroup_link(pin_dir, prog, program.fd().map_err(err)?.as_fd())?;
            }
        }
        let program = ebpf.program_mut(name).ok_or_else(|| err(aya::programs::ProgramError::NotLoaded))?;
        pin_program(pin_dir, prog, program)?;
    }

    let mut maps = Maps::from_source(|name| {
        let map = ebpf.take_map(name).ok_or_else(|| Error::Map {
            name,
            path: map_pin(pin_dir, name),
            source: aya::maps::MapError::InvalidName { name: name.to_owned() },
        })?;
        Ok((map, map_pin(pin_dir, name)))
    })?;
    let geometry = Config {
        maglev_size: config.maglev_size,
        max_tables: config.max_tables,
        // The socket LB serves the loader's own namespace: the node's.
        sock_netns_cookie: crate::sys::netns_cookie().map_err(io_err("SO_NETNS_COOKIE", pin_dir))?,
    };
    maps.config.set(0, geometry, 0).map_err(|source| Error::Map {
        name: map_names::CONFIG,
        path: map_pin(pin_dir, map_names::CONFIG),
        source,
    })?;
    info!(pin_dir = %pin_dir.display(), adopted, links_updated, "data path loaded");
    Ok(Datapath { pin_dir: pin_dir.to_owned(), adopted, links_updated, maps })
}

/// Pins `program` at its final path without a moment where the path is
/// missing: pin under a temporary name, then rename over the old pin.
fn pin_program(pin_dir: &Path, prog: Prog, program: &mut Program) -> Result<()> {
    let path = prog.pin_path(pin_dir);
    // bpffs refuses names with a dot.
    let tmp = pin_dir.join("progs").join(format!("{}_new{}", prog.name(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    program.pin(&tmp).map_err(|source| Error::Pin { path: tmp.clone(), source })?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    // aya forgets the temporary name; the pin now lives at `path`.
    Ok(())
}

/// Switches every pinned link of `prog`'s direction to `program`; pins of
/// links whose interface is gone are removed.
fn replace_in_links(pin_dir: &Path, prog: Prog, program: &mut SchedClassifier) -> Result<usize> {
    let mut updated = 0;
    for (ifindex, dir, path) in link_pins(pin_dir)? {
        if dir != prog {
            continue;
        }
        match crate::sys::link_ifindex(&path) {
            Ok(i) if i == ifindex => {}
            _ => {
                debug!(path = %path.display(), "removing pin of a detached link");
                let _ = fs::remove_file(&path);
                continue;
            }
        }
        let pinned = PinnedLink::from_pin(&path).map_err(|source| Error::Link { path: path.clone(), source })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|source| Error::Link { path: path.clone(), source })?;
        match program.attach_to_link(link) {
            Ok(id) => {
                // Keep the pin as the only owner: drop our fd without detaching.
                let link =
                    program.take_link(id).map_err(|source| Error::Program { name: prog.name().to_owned(), source })?;
                drop(link);
                updated += 1;
            }
            Err(e) => warn!(path = %path.display(), error = %e, "could not replace program in link"),
        }
    }
    Ok(updated)
}

/// Switches the pinned cgroup link of a socket-LB program (if any) to the
/// new `program` with `BPF_LINK_UPDATE`: no connect() in between goes
/// untranslated.
fn replace_in_cgroup_link(pin_dir: &Path, prog: Prog, fd: std::os::fd::BorrowedFd<'_>) -> Result<usize> {
    let path = cgroup_link_path(pin_dir, prog);
    if !path.exists() {
        return Ok(0);
    }
    match crate::sys::link_update(&path, fd) {
        Ok(()) => Ok(1),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "could not replace program in cgroup link; re-attaching");
            let _ = fs::remove_file(&path);
            Ok(0)
        }
    }
}

/// Typed handles on the maps pinned under `pin_dir` (for the agent after a
/// load, and for ferryctl, which works with the agent down).
pub fn open_pinned(pin_dir: &Path) -> Result<Maps> {
    Maps::from_source(|name| {
        let path = map_pin(pin_dir, name);
        if !path.exists() {
            return Err(Error::NotLoaded(path));
        }
        let data = MapData::from_pin(&path).map_err(|source| Error::Map { name, path: path.clone(), source })?;
        let map = Map::from_map_data(data).map_err(|source| Error::Map { name, path: path.clone(), source })?;
        Ok((map, path))
    })
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (`TC_ACT_OK` 0, `TC_ACT_SHOT` 2,
    /// `TC_ACT_REDIRECT` 7).
    pub verdict: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// Runs the pinned program `prog` once on `packet` (an Ethernet frame) with
/// `BPF_PROG_TEST_RUN`, against the live pinned maps.
pub fn test_run(pin_dir: &Path, prog: Prog, packet: &[u8]) -> Result<TestRunOutput> {
    let path = prog.pin_path(pin_dir);
    if !path.exists() {
        return Err(Error::NotLoaded(path));
    }
    let program =
        SchedClassifier::from_pin(&path).map_err(|source| Error::Program { name: prog.name().to_owned(), source })?;
    let mut out = vec![0u8; packet.len() + 256];
    let res = program
        .test_run(TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ..TestRunOptions::new() })
        .map_err(|source| Error::Program { name: prog.name().to_owned(), source })?;
    out.truncate(res.data_size_out as usize);
    Ok(TestRunOutput { verdict: res.return_value, packet: out })
}
