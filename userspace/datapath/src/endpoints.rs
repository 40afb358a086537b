//! Local pod endpoints (`FERRY_ENDPOINTS`): registered by the CNI plugin so
//! the from-pod program can hand a DNATed packet straight to a backend pod
//! on this node (`bpf_redirect_peer`). Opens only that one pinned map: the
//! plugin stays cheap.
use std::{net::IpAddr, path::Path};

use aya::maps::{HashMap, MapData};
use ferry_common::{map_names, EndpointKey, EndpointValue, NextHop, PortKey, PortValue, AF_INET, AF_INET6};

use crate::{prog::map_pin, Error, Result};

fn open(pin_dir: &Path) -> Result<Option<HashMap<MapData, EndpointKey, EndpointValue>>> {
    open_hash(pin_dir, map_names::ENDPOINTS)
}

/// A pinned hash map (plain or LRU) by name; `None` when not pinned.
fn open_hash<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<Option<HashMap<MapData, K, V>>> {
    let path = map_pin(pin_dir, name);
    if !path.exists() {
        return Ok(None);
    }
    let err = |source| Error::Map { name, path: path.clone(), source };
    let data = MapData::from_pin(&path).map_err(err)?;
    let map = aya::maps::Map::from_map_data(data).map_err(err)?;
    Ok(Some(map.try_into().map_err(err)?))
}

/// Whether an entry naming interface `entry` is selected by `ifindex`: that
/// interface, or with `None` any interface that no longer exists (in the
/// calling thread's namespace).
fn selected(entry: u32, ifindex: Option<u32>) -> bool {
    match ifindex {
        Some(i) => entry == i,
        None => nix::net::if_::if_indextoname(entry).is_err(),
    }
}

/// The map key of a pod address.
pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    let (addr, family) = match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], AF_INET6)
        }
    };
    EndpointKey { addr, family, _pad: [0; 3] }
}

/// Registers the pod behind host veth `ifindex` (interface MAC `mac`) for
/// each of its addresses. Returns false when the data path is not loaded.
pub fn register_endpoint(pin_dir: &Path, ifindex: u32, mac: [u8; 6], ips: &[IpAddr]) -> Result<bool> {
    let Some(mut map) = open(pin_dir)? else {
        return Ok(false);
    };
    let value = EndpointValue { ifindex, mac, _pad: [0; 2] };
    for ip in ips {
        map.insert(endpoint_key(*ip), value, 0).map_err(|source| Error::Map {
            name: map_names::ENDPOINTS,
            path: map_pin(pin_dir, map_names::ENDPOINTS),
            source,
        })?;
    }
    Ok(true)
}

/// Removes the endpoints (and learned MACs, [`forget_ports`]) of host veth
/// `ifindex`, or with `None` those whose interface no longer exists (in the
/// calling thread's namespace): a stale entry would send packets into a
/// vanished or reused interface. Returns how many endpoints were removed.
pub fn unregister_endpoints(pin_dir: &Path, ifindex: Option<u32>) -> Result<usize> {
    let removed = purge::<EndpointKey, EndpointValue>(pin_dir, map_names::ENDPOINTS, ifindex, |v| v.ifindex)?;
    forget_ports(pin_dir, ifindex)?;
    Ok(removed)
}

/// Removes the pod MACs the data path learned behind host veth `ifindex`
/// (`FERRY_PORTS`, and the next hops resolved to it, `FERRY_NEXTHOPS`), or
/// with `None` behind interfaces that are gone, so no translated packet is
/// handed to a vanished interface (or one that reused its index). Returns
/// how many MACs were removed.
pub fn forget_ports(pin_dir: &Path, ifindex: Option<u32>) -> Result<usize> {
    let removed = purge::<PortKey, PortValue>(pin_dir, map_names::PORTS, ifindex, |v| v.ifindex)?;
    purge::<EndpointKey, NextHop>(pin_dir, map_names::NEXTHOPS, ifindex, |v| v.ifindex)?;
    Ok(removed)
}

/// Deletes the entries of pinned hash map `name` whose interface (as
/// `ifindex_of` reads it) is [`selected`] by `ifindex`; a map that is not
/// pinned has none. Returns how many were deleted.
fn purge<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    ifindex: Option<u32>,
    ifindex_of: fn(&V) -> u32,
) -> Result<usize> {
    let Some(mut map) = open_hash::<K, V>(pin_dir, name)? else {
        return Ok(0);
    };
    let stale: Vec<K> =
        map.iter().filter_map(|e| e.ok()).filter(|(_, v)| selected(ifindex_of(v), ifindex)).map(|(k, _)| k).collect();
    for k in &stale {
        let _ = map.remove(k);
    }
    Ok(stale.len())
}
