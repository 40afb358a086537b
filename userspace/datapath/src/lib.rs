//! ferry-datapath: the userspace handle on Ferry's eBPF data path.
//!
//! The eBPF object (`ebpf/programs`, built by this crate's build.rs) is
//! embedded. Everything lives pinned under one bpffs directory (default
//! [`ferry_common::DEFAULT_PIN_DIR`]), so a restarted agent (even after
//! `kill -9`), `ferryctl` and the CNI plugin all see the same state:
//!
//! ```text
//! <pin_dir>/maps/<MAP NAME>         ferry_common::map_names::*
//! <pin_dir>/progs/<PROG NAME>       ferry_common::prog_names::*
//! <pin_dir>/links/<ifindex>-in      tcx ingress link (from-pod) of a host veth
//! <pin_dir>/links/<ifindex>-out     tcx egress link (to-pod)
//! ```
//!
//! Public API:
//! - [`load_or_adopt`]`(pin_dir, &DatapathConfig) -> Result<Datapath>`: load the
//!   programs, reuse pinned maps (creating missing ones), replace the program
//!   of every pinned link atomically (`bpf_link_update`), re-pin programs.
//! - [`open_pinned`]`(pin_dir) -> Result<Maps>`: typed handles to every map.
//! - [`programs_pinned`]`(pin_dir) -> bool`: whether a loader ran.
//! - [`attach`]`(pin_dir, Iface) -> Result<Attachment>`: from-pod at tcx ingress,
//!   to-pod at tcx egress of a host veth, pinned so they outlive the caller;
//!   idempotent. [`detach`]`(pin_dir, ifindex)`, [`gc_links`]`(pin_dir)`.
//! - [`attach_uplink`]`(pin_dir, Iface)` / [`detach_uplink`]: from-net at tcx
//!   ingress and to-net at tcx egress of the node's uplink (masquerade).
//! - [`attach_matching`]`(pin_dir, &IfacePattern)`, [`spawn_attach_watcher`]:
//!   attach to existing and new interfaces whose name matches a pattern.
//! - [`register_endpoint`]`(pin_dir, ifindex, pod_mac, &ips)` /
//!   [`unregister_endpoints`]`(pin_dir, Some(ifindex) | None)`: local pods
//!   for `bpf_redirect_peer` (the CNI plugin calls these on ADD / DEL).
//! - [`test_run`]`(pin_dir, Prog, packet) -> Result<TestRunOutput>`:
//!   `BPF_PROG_TEST_RUN` of a pinned program.
//!
//! Interface names and indexes are those of the calling thread's network
//! namespace: enter the node namespace first (the watcher thread inherits
//! the namespace of the thread that spawns it).
//!
//! What the programs expect in the maps (the agent's contract):
//! - slot `table * maglev_size + slot` of `FERRY_MAGLEV` (two u32 slots an
//!   element, written through a shared mapping: [`MaglevTables`]) = backend id, with
//!   `maglev_size`/`max_tables` from `FERRY_CONFIG[0]` (written here on load).
//! - `BackendValue::service_id` = the owning `ServiceValue::id`; only
//!   `backend_state::ACTIVE` backends are chosen for new flows (Maglev or
//!   affinity); established TCP flows keep whatever backend they have, UDP
//!   flows move when their backend id disappears or changes address/port.
//! - `backend_count == 0` = reject: TCP RST, UDP ICMP(v6) port unreachable.
//! - Hairpin flows are SNATed to `ferry_common::HAIRPIN_V4` / `HAIRPIN_V6`.
//! - Masquerade: `FERRY_MASQ_IFACES[uplink ifindex]` = its addresses and
//!   SNAT port range; `FERRY_MASQ_SRC` = the sources to masquerade (this
//!   node's pod CIDRs), `FERRY_NONMASQ` = destinations that keep the pod's
//!   source (LPM tries keyed by [`lpm_key`]). The programs fill
//!   `FERRY_SNAT` / `FERRY_SNAT_REV`; the agent expires them
//!   ([`expire_nat`]).
//! - Counters: `FERRY_SVC_STATS[service id]`, `FERRY_DROPS[DropReason]`,
//!   `FERRY_GLOBAL[GlobalCounter]` (all per-CPU: sum the CPUs).
mod attach;
mod endpoints;
mod load;
mod maglev;
mod nat;
mod prog;
mod sys;
pub mod testing;
mod watch;

use std::{io, path::PathBuf};

pub use attach::{
    attach, attach_cgroup, attach_matching, attach_uplink, detach, detach_cgroup, detach_uplink, gc_links, Attachment,
    Iface, IfacePattern,
};
pub use endpoints::{endpoint_key, forget_ports, register_endpoint, unregister_endpoints};
pub use ferry_common as common;
pub use load::{load_or_adopt, open_pinned, programs_pinned, test_run, Datapath, DatapathConfig, Maps, TestRunOutput};
pub use maglev::{MaglevTables, MaglevWriter};
pub use nat::{
    expire_nat, list_nat, lpm_key, monotonic_ns, proto_name, reverse_key, Expiry, NatFlow, NatState, NatTimeouts,
};
pub use prog::{link_pins, Hook, Prog};
pub use sys::ensure_bpffs;
pub use watch::{spawn_attach_watcher, AttachWatcher, WatchEvent};

/// The eBPF object, built for bpfel by build.rs.
pub(crate) static ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object (maps pinned under {pin_dir}): {source}")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {name} ({path}): {source}")]
    Map {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "pinned map {path} has {found} entries but the configuration asks for {want}; \
         remove it (losing its state) to resize"
    )]
    MapSizeMismatch { path: PathBuf, found: u32, want: u32 },
    #[error("data path not loaded: {0} does not exist (is ferry-agent running?)")]
    NotLoaded(PathBuf),
    #[error("interface {iface}: {source}")]
    Interface {
        iface: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("netlink: {0}")]
    Netlink(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
