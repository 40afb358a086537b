//! The network configuration on stdin (SPEC.md "Network configuration"),
//! with ferry's keys:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `bridge` | `ferry0` | bridge the pods are attached to (created on first ADD) |
//! | `mtu` | 1500 | MTU of the bridge and both veth ends |
//! | `hairpinMode` | true | hairpin on the bridge port (a pod can reach itself via a Service) |
//! | `isGateway` | true | put each range's gateway address on the bridge, enable forwarding |
//! | `isDefaultGateway` | true | default route(s) in the pod via the gateway |
//! | `pinDir` | `/sys/fs/bpf/ferry` | where the data path's pinned programs/maps are |
//! | `ipMasq` | false | accepted for bridge-plugin compatibility; masquerade is the data path's to-net program (DESIGN.md), the plugin adds no iptables rule |
//! | `ipam` | required | `type` "ferry" (or absent): built-in; anything else: delegated |
//! | `dns` | none | copied into the result |

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::env::validate_ifname;
use crate::error::{CniError, Code, Result};
use crate::ipam::{self, IpamConfig};
use crate::result::Dns;

fn yes() -> bool {
    true
}
fn default_bridge() -> String {
    "ferry0".into()
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/ferry")
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Capability arguments we honour (CONVENTIONS.md); others are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `ips`: addresses (optionally with prefix) to assign.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac`: the MAC address of the sandbox interface.
    #[serde(default)]
    pub mac: Option<String>,
    /// `ipRanges`: range sets that replace `ipam.ranges` (host-local's
    /// semantics), for runtimes that hand out the node's pod CIDR.
    #[serde(default)]
    pub ip_ranges: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default = "yes")]
    pub hairpin_mode: bool,
    #[serde(default = "yes")]
    pub is_gateway: bool,
    #[serde(default = "yes")]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// libcni also sends the attachments under this (older) key.
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum Ipam {
    Builtin(IpamConfig),
    /// Executed from CNI_PATH with the same stdin.
    Delegated(String),
}

/// A parsed and validated config plus the version the result must have.
#[derive(Debug, Clone)]
pub struct Config {
    pub conf: NetConf,
    pub version: String,
    pub ipam: Ipam,
    pub mtu: u32,
    /// The raw stdin, passed unchanged to a delegated IPAM plugin.
    pub raw: Vec<u8>,
}

/// Only the version, for VERSION and for tagging errors.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion").and_then(Value::as_str).map(str::to_string)
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

/// SPEC.md: a network name starts with an alphanumeric, then alphanumerics,
/// `_`, `.` or `-`. (It is also a directory name of the IPAM store.)
fn validate_network_name(name: &str) -> Result<()> {
    let mut c = name.chars();
    let ok = c.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid network name {name:?}")))
    }
}

impl Config {
    /// Parses stdin: not JSON is code 6, an unsupported version code 1, any
    /// other problem code 7. Nothing has been touched when this fails.
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(Code::Decode, "network configuration is not valid JSON").with_details(e))?;
        if !value.is_object() {
            return Err(CniError::new(Code::Decode, "network configuration must be a JSON object"));
        }
        // The version decides how everything else is read: check it first.
        let version = match value.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            None | Some(Value::Null) => String::new(),
            Some(other) => {
                return Err(CniError::new(Code::IncompatibleVersion, format!("cniVersion {other} is not a string")))
            }
        };
        let version = if version.is_empty() {
            // 1.1.0's `cniVersions`: use the highest one we support.
            let listed: Vec<String> = value
                .get("cniVersions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            listed
                .iter()
                .filter_map(|v| crate::result::Version::parse(v).filter(|_| crate::result::check_version(v).is_ok()))
                .max()
                .map(|v| format!("{}.{}.{}", v.0, v.1, v.2))
                .unwrap_or_default()
        } else {
            version
        };
        crate::result::check_version(&version)?;
        let conf: NetConf =
            serde_json::from_value(value).map_err(|e| invalid("invalid network configuration").with_details(e))?;
        validate_network_name(&conf.name)?;
        validate_ifname(&conf.bridge).map_err(|m| invalid(format!("bridge name {:?}: {m}", conf.bridge)))?;
        let mtu = conf.mtu.unwrap_or(1500);
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("mtu {mtu} is outside 68..65535")));
        }
        let ipam_value =
            conf.ipam.as_ref().filter(|v| v.is_object()).ok_or_else(|| invalid("\"ipam\" must be an object"))?;
        let ipam = match ipam_value.get("type").and_then(Value::as_str) {
            None | Some(ipam::BUILTIN) => {
                let mut v = ipam_value.clone();
                if let Some(ranges) =
                    conf.runtime_config.ip_ranges.as_ref().filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
                {
                    let o = v.as_object_mut().expect("checked object");
                    for k in ["subnet", "rangeStart", "rangeEnd", "gateway"] {
                        o.remove(k);
                    }
                    o.insert("ranges".into(), ranges.clone());
                }
                Ipam::Builtin(IpamConfig::parse(&v)?)
            }
            Some("") => return Err(invalid("ipam.type must not be empty")),
            Some(t) if t.contains('/') => {
                return Err(invalid(format!("ipam.type {t:?} must be a plugin name, not a path")))
            }
            Some(t) => Ipam::Delegated(t.to_string()),
        };
        Ok(Config { conf, version, ipam, mtu, raw: stdin.to_vec() })
    }

    /// Addresses the runtime asked for: CNI_ARGS `IP=a,b`, the `ips`
    /// capability, `args.cni.ips` (CONVENTIONS.md). Prefixes are ignored:
    /// the range decides the prefix.
    pub fn requested_ips(&self, cni_args_ip: Option<&str>) -> Result<Vec<IpAddr>> {
        let mut raw: Vec<String> = vec![];
        if let Some(s) = cni_args_ip {
            raw.extend(s.split(',').filter(|s| !s.is_empty()).map(str::to_string));
        }
        raw.extend(self.conf.runtime_config.ips.iter().cloned());
        if let Some(a) = self.conf.args.as_ref().and_then(|a| a.pointer("/cni/ips")).and_then(Value::as_array) {
            raw.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)));
        }
        let mut out = vec![];
        for s in raw {
            let ip: IpAddr = s
                .split('/')
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| invalid(format!("requested IP {s:?} is not an IP address")))?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// The sandbox interface's MAC if the runtime chose one (`mac`
    /// capability, or `MAC=` in CNI_ARGS); must be unicast.
    pub fn requested_mac(&self, cni_args_mac: Option<&str>) -> Result<Option<[u8; 6]>> {
        let Some(s) = self.conf.runtime_config.mac.as_deref().or(cni_args_mac) else { return Ok(None) };
        let bad = || invalid(format!("requested MAC {s:?} is not a unicast MAC address"));
        let parts: Vec<u8> = s
            .split(':')
            .map(|p| if p.len() == 2 { u8::from_str_radix(p, 16).ok() } else { None })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let mac: [u8; 6] = parts.try_into().map_err(|_| bad())?;
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(bad());
        }
        Ok(Some(mac))
    }

    /// The valid attachments of a GC request.
    pub fn valid_attachments(&self) -> HashSet<(String, String)> {
        self.conf
            .valid_attachments
            .iter()
            .chain(self.conf.attachments.iter())
            .flatten()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Config> {
        Config::parse(&serde_json::to_vec(&v).unwrap())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "net1", "type": "ferry",
               "ipam": {"type": "ferry", "subnet": "10.1.0.0/24"}})
    }

    #[test]
    fn defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.conf.bridge, "ferry0");
        assert_eq!(c.mtu, 1500);
        assert!(c.conf.hairpin_mode && c.conf.is_gateway && c.conf.is_default_gateway);
        assert_eq!(c.conf.pin_dir, PathBuf::from("/sys/fs/bpf/ferry"));
        assert!(matches!(c.ipam, Ipam::Builtin(_)));
        let mut d = base();
        d["ipam"]["type"] = "host-local".into();
        assert!(matches!(parse(d).unwrap().ipam, Ipam::Delegated(t) if t == "host-local"));
        let mut n = base();
        n["ipam"].as_object_mut().unwrap().remove("type");
        assert!(matches!(parse(n).unwrap().ipam, Ipam::Builtin(_)));
    }

    #[test]
    fn error_codes() {
        // one row per bad input: (mutation, expected code)
        let cases: Vec<(Value, u32)> = vec![
            (json!({"cniVersion": "0.2.0"}), 1),
            (json!({"cniVersion": "7.0.0"}), 1),
            (json!({"cniVersion": null}), 1),
            (json!({"cniVersion": 1}), 1),
            (json!({"name": "bad name"}), 7),
            (json!({"name": 5}), 7),
            (json!({"mtu": 10}), 7),
            (json!({"mtu": "big"}), 7),
            (json!({"bridge": "waytoolongbridgename"}), 7),
            (json!({"ipam": null}), 7),
            (json!({"ipam": {"type": "ferry", "subnet": "10.1.0.0/40"}}), 7),
            (json!({"ipam": {"type": "../evil"}}), 7),
        ];
        for (patch, code) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let e = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(e.code, code, "{v}: {e}");
        }
        assert_eq!(Config::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(Config::parse(b"[1,2]").unwrap_err().code, 6);
        assert_eq!(Config::parse(b"").unwrap_err().code, 6);
    }

    #[test]
    fn cni_versions_list_picks_highest_supported() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("cniVersion");
        v["cniVersions"] = json!(["0.4.0", "1.0.0", "9.0.0"]);
        assert_eq!(parse(v).unwrap().version, "1.0.0");
    }

    #[test]
    fn requested_ips_from_all_sources() {
        let mut v = base();
        v["runtimeConfig"] = json!({"ips": ["10.1.0.9/24"]});
        v["args"] = json!({"cni": {"ips": ["10.1.0.10"]}});
        let c = parse(v).unwrap();
        let ips = c.requested_ips(Some("10.1.0.8")).unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(c.requested_ips(Some("nope")).unwrap_err().code, 7);
    }

    #[test]
    fn capabilities_mac_and_ip_ranges() {
        let mut v = base();
        v["runtimeConfig"] = json!({"mac": "0a:58:0a:f4:00:05", "ipRanges": [[{"subnet": "10.9.0.0/24"}]]});
        let c = parse(v).unwrap();
        assert_eq!(c.requested_mac(None).unwrap(), Some([0x0a, 0x58, 0x0a, 0xf4, 0, 5]));
        let Ipam::Builtin(ic) = &c.ipam else { panic!("builtin") };
        assert_eq!(ic.sets[0][0].subnet.to_string(), "10.9.0.0/24");
        let plain = parse(base()).unwrap();
        assert_eq!(plain.requested_mac(Some("02:00:00:00:00:01")).unwrap(), Some([2, 0, 0, 0, 0, 1]));
        for bad in ["01:00:00:00:00:01", "zz:00:00:00:00:01", "02:00:00:00:00", "00:00:00:00:00:00"] {
            assert_eq!(plain.requested_mac(Some(bad)).unwrap_err().code, 7, "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        // Arbitrary bytes never panic the parser and always map to a
        // documented code.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Err(e) = Config::parse(&bytes) {
                proptest::prop_assert!([1, 6, 7].contains(&e.code), "code {}", e.code);
            }
        }

        // Structurally plausible configs with arbitrary values: same property.
        #[test]
        fn arbitrary_values_never_panic(
            name in ".{0,20}", bridge in ".{0,20}", subnet in "[0-9a-f.:/]{0,24}",
            start in "[0-9a-f.:]{0,16}", mtu in proptest::prelude::any::<i64>(), ver in "[0-9.]{0,6}",
        ) {
            let v = json!({"cniVersion": ver, "name": name, "type": "ferry", "bridge": bridge, "mtu": mtu,
                           "ipam": {"ranges": [[{"subnet": subnet, "rangeStart": start}]]}});
            if let Err(e) = Config::parse(&serde_json::to_vec(&v).unwrap()) {
                proptest::prop_assert!([1, 6, 7].contains(&e.code), "code {}", e.code);
            }
        }
    }
}
