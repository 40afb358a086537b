//! Spec versions and the Result type, shaped for the version the runtime asked
//! for.
//!
//! What changes between the versions we support (SPEC.md and
//! Documentation/spec-upgrades.md):
//! - 0.3.0, 0.3.1, 0.4.0: every `ips` entry carries `"version": "4"|"6"`.
//! - 1.0.0: `ips[].version` is gone.
//! - 1.1.0: interfaces may carry `mtu`, `socketPath`, `pciID`; routes may
//!   carry `mtu`, `advmss`, `priority`, `table`, `scope`. Older versions must
//!   not see those keys.
//! - 0.1.0/0.2.0 (`ip4`/`ip6` results) are not supported.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, Code, Result};

pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// A parsed semantic version (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

/// Checks the config's version against ours: code 1 unless supported.
pub fn check_version(v: &str) -> Result<Version> {
    if SUPPORTED_VERSIONS.contains(&v) {
        if let Some(p) = Version::parse(v) {
            return Ok(p);
        }
    }
    Err(CniError::new(Code::IncompatibleVersion, format!("incompatible CNI version {v:?}"))
        .with_details(format!("supported versions: {}", SUPPORTED_VERSIONS.join(", "))))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "ip/prefix".
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// 1.1.0 extras, passed through untouched when they came in a prevResult.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

/// A plugin result in version-neutral form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported version (a prevResult, or what a
    /// delegated IPAM plugin printed). `ips[].version` is accepted and
    /// dropped: it is derived from the address when shaping.
    pub fn from_value(v: &Value) -> Result<Self> {
        serde_json::from_value(v.clone())
            .map_err(|e| CniError::new(Code::InvalidConfig, "cannot parse a CNI result").with_details(e))
    }

    /// Appends `other` (ours) after `self` (a prevResult), renumbering
    /// `ips[].interface` so indexes keep pointing at the same interfaces.
    pub fn merged(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }

    /// The JSON the runtime gets for `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let v = Version::parse(version).unwrap_or(Version::V1_1_0);
        let mut out = serde_json::json!({ "cniVersion": version });
        let mut ifaces = serde_json::to_value(&self.interfaces).unwrap_or_default();
        if v < Version::V1_1_0 {
            for i in ifaces.as_array_mut().into_iter().flatten() {
                if let Some(o) = i.as_object_mut() {
                    o.remove("mtu");
                    o.remove("socketPath");
                    o.remove("pciID");
                }
            }
        }
        let mut ips = serde_json::to_value(&self.ips).unwrap_or_default();
        if v < Version::V1_0_0 {
            for ip in ips.as_array_mut().into_iter().flatten() {
                let family = if ip["address"].as_str().unwrap_or("").contains(':') { "6" } else { "4" };
                ip["version"] = family.into();
            }
        }
        let mut routes = serde_json::to_value(&self.routes).unwrap_or_default();
        if v < Version::V1_1_0 {
            for r in routes.as_array_mut().into_iter().flatten() {
                if let Some(o) = r.as_object_mut() {
                    o.retain(|k, _| k == "dst" || k == "gw");
                }
            }
        }
        // SPEC.md lists all four keys of a Success result; empty ones are
        // printed as empty (the reference plugins print "dns": {} too).
        out["interfaces"] = ifaces;
        out["ips"] = ips;
        out["routes"] = routes;
        out["dns"] = serde_json::to_value(&self.dns).unwrap_or_default();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "ferry0".into(), mac: Some("02:00:00:00:00:01".into()), ..Default::default() },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig { address: "10.0.0.2/24".into(), gateway: Some("10.0.0.1".into()), interface: Some(1) },
                IpConfig { address: "fd00::2/64".into(), gateway: Some("fd00::1".into()), interface: Some(1) },
            ],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.0.0.1".into()),
                extra: Default::default(),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn ips_carry_version_only_before_1_0() {
        for (ver, want) in [("0.3.0", true), ("0.3.1", true), ("0.4.0", true), ("1.0.0", false), ("1.1.0", false)] {
            let j = sample().to_json(ver);
            assert_eq!(j["cniVersion"], ver);
            assert_eq!(j["ips"][0].get("version").is_some(), want, "{ver}");
            if want {
                assert_eq!(j["ips"][0]["version"], "4");
                assert_eq!(j["ips"][1]["version"], "6");
            }
        }
    }

    #[test]
    fn interface_mtu_only_in_1_1() {
        assert_eq!(sample().to_json("1.1.0")["interfaces"][1]["mtu"], 1500);
        assert!(sample().to_json("1.0.0")["interfaces"][1].get("mtu").is_none());
        assert!(sample().to_json("0.4.0")["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn merge_renumbers_interfaces_and_round_trips() {
        let prev = CniResult::from_value(&sample().to_json("0.4.0")).unwrap();
        let merged = prev.clone().merged(sample());
        assert_eq!(merged.interfaces.len(), 4);
        assert_eq!(merged.ips[2].interface, Some(3));
        assert_eq!(merged.ips[0], sample().ips[0]);
    }

    #[test]
    fn version_checks() {
        assert!(check_version("1.1.0").is_ok());
        assert_eq!(check_version("0.2.0").unwrap_err().code, 1);
        assert_eq!(check_version("").unwrap_err().code, 1);
        assert_eq!(check_version("9.9.9").unwrap_err().code, 1);
        assert!(Version::parse("1.0").is_none());
        assert!(Version(0, 4, 0) < Version(1, 0, 0));
    }
}
