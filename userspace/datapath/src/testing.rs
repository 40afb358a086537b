//! Shortcuts for tests and tools that program the maps directly, without
//! the agent: a self-removing bpffs pin directory, address conversion, and
//! a one-call Service with a round-robin-filled Maglev table.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use ferry_common::{BackendValue, EndpointKey, ServiceKey, ServiceValue, AF_INET, AF_INET6};

use crate::Maps;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `/sys/fs/bpf/ferry-test-<pid>-<n>`, removed (pins, hence maps, programs
/// and links) on drop, also when the test panics.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = PathBuf::from(format!("/sys/fs/bpf/ferry-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        PinDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Map layout of an address (as on the wire).
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, c) in o.chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            (w, AF_INET6)
        }
    }
}

pub fn svc_key(vip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    let (addr, family) = addr_words(vip);
    ServiceKey { addr, port: port.to_be(), proto, family }
}

pub fn backend(addr: IpAddr, port: u16, proto: u8, service_id: u32) -> BackendValue {
    let (a, family) = addr_words(addr);
    BackendValue {
        addr: a,
        port: port.to_be(),
        proto,
        family,
        service_id,
        state: ferry_common::backend_state::ACTIVE,
        _pad: [0; 3],
    }
}

/// Programs one frontend `id` with the given backends (ids `id*100 + i`),
/// Maglev table `id` filled round-robin (what a real Maglev table
/// approximates), written backends first, service last.
#[expect(clippy::too_many_arguments, reason = "a test helper mirroring every field of a frontend")]
pub fn program_service(
    maps: &mut Maps,
    id: u32,
    vip: IpAddr,
    port: u16,
    proto: u8,
    backends: &[(IpAddr, u16)],
    flags: u32,
    affinity_timeout_s: u32,
) -> Vec<u32> {
    let cfg = maps.maglev_config().unwrap();
    let mut ids = Vec::new();
    for (i, (a, p)) in backends.iter().enumerate() {
        let bid = id * 100 + i as u32;
        maps.backends.insert(bid, backend(*a, *p, proto, id), 0).unwrap();
        ids.push(bid);
    }
    if !ids.is_empty() {
        let table: Vec<u32> = (0..cfg.maglev_size as usize).map(|slot| ids[slot % ids.len()]).collect();
        maps.maglev.write_table(id, cfg.maglev_size, &table).unwrap();
    }
    let value =
        ServiceValue { id, backend_count: ids.len() as u32, maglev_table: id, flags, affinity_timeout_s, _pad: 0 };
    maps.services.insert(svc_key(vip, port, proto), value, 0).unwrap();
    let (addr, family) = addr_words(vip);
    let vkey = EndpointKey { addr, family, _pad: [0; 3] };
    let n = maps.vips.get(&vkey, 0).unwrap_or(0);
    maps.vips.insert(vkey, n + 1, 0).unwrap();
    ids
}
