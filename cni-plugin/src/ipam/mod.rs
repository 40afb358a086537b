//! IPAM: the built-in host-local-compatible allocator, or a delegated plugin.
//!
//! `ipam.type` "ferry" (or no `type`) selects the built-in allocator; any
//! other type (host-local, static, whereabouts, dhcp...) is executed from
//! CNI_PATH as the spec describes ("Delegated plugins"), so users keep the
//! IPAM they already run.

pub mod alloc;
pub mod cidr;
pub mod config;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;

pub use config::{IpamConfig, Range, RouteConf};
use store::Store;

use crate::error::{CniError, Code, Result};

/// The name that selects the built-in allocator.
pub const BUILTIN: &str = "ferry";

/// One address handed out, with what the pod needs to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// Reserves one address per range set for (container, ifname). `requested`
/// (from CNI_ARGS `IP=` or the `ips` capability) are honoured first, each in
/// the set that contains it. All-or-nothing: on any error the addresses
/// reserved by this call are released before returning.
pub fn allocate(cfg: &IpamConfig, network: &str, id: &str, ifname: &str, requested: &[IpAddr]) -> Result<Vec<Lease>> {
    let store = Store::lock(&cfg.data_dir, network)?;
    let mut taken = store.taken()?;
    let mut leases: Vec<(usize, Lease)> = vec![];
    let result = (|| {
        for &ip in requested {
            let (set, range) = cfg.range_of(ip).ok_or_else(|| {
                CniError::new(Code::AddressExhausted, format!("requested IP {ip} is outside every configured range"))
            })?;
            if leases.iter().any(|(s, _)| *s == set) {
                return Err(CniError::new(Code::InvalidConfig, format!("two requested IPs fall in range set {set}")));
            }
            if ip == range.gateway || taken.contains(&ip) {
                return Err(CniError::new(Code::AddressExhausted, format!("requested IP {ip} is already in use")));
            }
            store.reserve(ip, id, ifname)?;
            taken.insert(ip);
            leases.push((set, Lease { ip, prefix: range.subnet.prefix, gateway: range.gateway }));
        }
        for (i, set) in cfg.sets.iter().enumerate() {
            if leases.iter().any(|(s, _)| *s == i) {
                continue;
            }
            let ip = alloc::next_free(set, &taken, store.last_reserved(i)).ok_or_else(|| {
                let subnets: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
                CniError::new(Code::AddressExhausted, format!("no free address left in {}", subnets.join(", ")))
            })?;
            store.reserve(ip, id, ifname)?;
            taken.insert(ip);
            store.set_last_reserved(i, ip)?;
            let range = cfg.range_of(ip).map(|(_, r)| r).expect("next_free returns an address of the set");
            leases.push((i, Lease { ip, prefix: range.subnet.prefix, gateway: range.gateway }));
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (_, l) in &leases {
            let _ = store.release(l.ip);
        }
        return Err(e);
    }
    leases.sort_by_key(|(s, _)| *s);
    Ok(leases.into_iter().map(|(_, l)| l).collect())
}

/// Releases specific addresses (ADD rollback).
pub fn release_ips(cfg: &IpamConfig, network: &str, ips: &[IpAddr]) -> Result<()> {
    let store = Store::lock(&cfg.data_dir, network)?;
    ips.iter().try_for_each(|ip| store.release(*ip))
}

/// Releases everything (container, ifname) holds; idempotent.
pub fn release(cfg: &IpamConfig, network: &str, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    if !cfg.data_dir.join(network).is_dir() {
        return Ok(vec![]);
    }
    Store::lock(&cfg.data_dir, network)?.release_owner(id, ifname)
}

/// GC: releases every reservation whose owner is not in `valid`; returns
/// what was released.
pub fn gc(cfg: &IpamConfig, network: &str, valid: &HashSet<(String, String)>) -> Result<Vec<store::Reservation>> {
    if !cfg.data_dir.join(network).is_dir() {
        return Ok(vec![]);
    }
    let store = Store::lock(&cfg.data_dir, network)?;
    let mut released = vec![];
    for r in store.reservations()? {
        let keep = valid.contains(&(r.container_id.clone(), r.ifname.clone()))
            || (r.ifname.is_empty() && valid.iter().any(|(c, _)| *c == r.container_id));
        if !keep {
            store.release(r.ip)?;
            released.push(r);
        }
    }
    Ok(released)
}

/// CHECK: every address in `ips` is reserved for (container, ifname).
pub fn check(cfg: &IpamConfig, network: &str, id: &str, ifname: &str, ips: &[IpAddr]) -> Result<()> {
    let store = Store::lock(&cfg.data_dir, network)?;
    let mine: HashSet<IpAddr> = store
        .reservations()?
        .into_iter()
        .filter(|r| r.container_id == id && (r.ifname.is_empty() || r.ifname == ifname))
        .map(|r| r.ip)
        .collect();
    for ip in ips {
        if !mine.contains(ip) {
            return Err(CniError::new(
                Code::CheckFailed,
                format!("ipam: {ip} is not reserved for container {id} / {ifname}"),
            ));
        }
    }
    Ok(())
}

/// STATUS: the data dir is writable and every range set has a free address.
pub fn status(cfg: &IpamConfig, network: &str) -> Result<()> {
    let not_available = |msg: String| CniError::new(Code::NotAvailable, msg);
    let store = Store::lock(&cfg.data_dir, network).map_err(|e| not_available(format!("{}: {}", e.msg, e.details)))?;
    let dir = store.dir().to_path_buf();
    let c =
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| not_available("bad data dir".into()))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(not_available(format!(
            "ipam data dir {} is not writable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    let taken = store.taken().map_err(|e| not_available(e.msg))?;
    for set in &cfg.sets {
        if alloc::free_count(set, &taken) == 0 {
            let subnets: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
            return Err(not_available(format!("address space exhausted: {}", subnets.join(", "))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(dir: &std::path::Path, ranges: serde_json::Value) -> IpamConfig {
        IpamConfig::parse(&json!({"ranges": ranges, "dataDir": dir})).unwrap()
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-ipam-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn concurrent_allocations_never_collide_and_release_by_owner() {
        let dir = scratch("conc");
        let c = cfg(&dir, json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]]));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || allocate(&c, "net", &format!("c{i}"), "eth0", &[]).unwrap())
            })
            .collect();
        let leases: Vec<Lease> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let unique: HashSet<IpAddr> = leases.iter().map(|l| l.ip).collect();
        assert_eq!(unique.len(), 32, "an address was handed out twice");
        assert!(leases.iter().all(|l| l.gateway.to_string() == "10.1.0.1" || l.gateway.to_string() == "fd00::1"));
        assert_eq!(release(&c, "net", "c3", "eth0").unwrap().len(), 2);
        assert_eq!(release(&c, "net", "c3", "eth0").unwrap().len(), 0, "release is idempotent");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exhaustion_is_all_or_nothing_and_gc_keeps_valid_owners() {
        let dir = scratch("full");
        // one usable IPv4 address (.2), plenty of IPv6
        let c = cfg(&dir, json!([[{"subnet": "10.2.0.0/30"}], [{"subnet": "fd01::/64"}]]));
        allocate(&c, "net", "a", "eth0", &[]).unwrap();
        let e = allocate(&c, "net", "b", "eth0", &[]).unwrap_err();
        assert_eq!(e.code, Code::AddressExhausted as u32);
        // the IPv6 address b would have had was not kept
        let store = Store::lock(&c.data_dir, "net").unwrap();
        assert_eq!(store.taken().unwrap().len(), 2);
        drop(store);
        assert_eq!(status(&c, "net").unwrap_err().code, Code::NotAvailable as u32);
        allocate(&c, "net", "c", "eth1", &["fd01::99".parse().unwrap()]).unwrap_err();
        let valid: HashSet<(String, String)> = HashSet::new();
        let released = gc(&c, "net", &valid).unwrap();
        assert_eq!(released.len(), 2);
        assert!(status(&c, "net").is_ok());
        let mine = allocate(&c, "net", "d", "eth0", &["fd01::99".parse().unwrap()]).unwrap();
        assert!(mine.iter().any(|l| l.ip.to_string() == "fd01::99"));
        let keep: HashSet<(String, String)> = [("d".to_string(), "eth0".to_string())].into();
        assert!(gc(&c, "net", &keep).unwrap().is_empty());
        check(&c, "net", "d", "eth0", &["fd01::99".parse().unwrap()]).unwrap();
        assert_eq!(check(&c, "net", "x", "eth0", &["fd01::99".parse().unwrap()]).unwrap_err().code, 103);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
