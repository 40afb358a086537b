//! Delegated plugins (SPEC.md "Delegated plugins"): an IPAM plugin named by
//! `ipam.type` is found in CNI_PATH and executed with our environment
//! (CNI_COMMAND set to the operation) and our config on stdin. Its errors
//! are passed on with their own code.
//!
//! Versions: the delegate may speak an older spec than the runtime asked of
//! us (Debian's host-local stops at 1.0.0; a 1.1.0 conflist is the README's
//! example). As libcni does before it calls a plugin, we ask the delegate's
//! VERSION once per invocation and speak to it in the highest version both
//! sides support that is not above the requested one: the config (and its
//! prevResult) go to it in that version, and its result is read in any
//! version and re-shaped by the caller for the runtime. An operation the
//! negotiated version does not have (CHECK below 0.4.0, STATUS and GC below
//! 1.1.0) is not delegated; [`Delegate::exec`] says so on stderr, which
//! runtimes log, and returns `Ok(None)`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::result::{CniResult, Version, SUPPORTED_VERSIONS};

/// One delegated plugin, resolved and version-negotiated for this invocation.
#[derive(Debug)]
pub struct Delegate {
    plugin: String,
    bin: PathBuf,
    /// The version the delegate is spoken to in.
    version: Version,
    /// The config for it: the runtime's, with `cniVersion` (and prevResult)
    /// in `version`.
    stdin: Vec<u8>,
}

fn find(plugin: &str, env: &Env) -> Result<PathBuf> {
    if env.path.is_empty() {
        return Err(CniError::new(Code::InvalidEnv, format!("CNI_PATH is required to run the ipam plugin {plugin:?}")));
    }
    env.path.iter().map(|d| d.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(Code::InvalidConfig, format!("ipam plugin {plugin:?} not found in CNI_PATH"))
            .with_details(format!("searched {:?}", env.path))
    })
}

/// The version to speak to a plugin that supports `theirs`: the highest one
/// both sides support, not above `requested`. `None` when they share none.
pub fn negotiate(requested: Version, theirs: &[String]) -> Option<Version> {
    SUPPORTED_VERSIONS
        .iter()
        .filter_map(|v| Version::parse(v))
        .filter(|v| *v <= requested && theirs.iter().any(|t| Version::parse(t) == Some(*v)))
        .max()
}

/// The oldest spec version that has `cmd`.
fn introduced(cmd: Command) -> Version {
    match cmd {
        Command::Check => Version::V0_4_0,
        Command::Status | Command::Gc => Version::V1_1_0,
        Command::Add | Command::Del | Command::Version => Version(0, 3, 0),
    }
}

impl Delegate {
    /// Finds `plugin` in CNI_PATH and negotiates the version for a config
    /// of version `requested` (`raw` is the config as the runtime sent it).
    pub fn new(plugin: &str, env: &Env, requested: &str, raw: &[u8]) -> Result<Self> {
        let bin = find(plugin, env)?;
        let requested_v = Version::parse(requested).unwrap_or(Version::V1_1_0);
        let ask = serde_json::to_vec(&serde_json::json!({ "cniVersion": requested })).expect("static JSON");
        // A plugin whose VERSION fails or prints nothing usable is spoken to
        // in the requested version, and left to refuse it itself.
        let theirs: Option<Vec<String>> = run(&bin, plugin, Command::Version, &ask)
            .ok()
            .flatten()
            .and_then(|v| v.get("supportedVersions").cloned())
            .and_then(|v| serde_json::from_value(v).ok());
        let version = match theirs {
            None => requested_v,
            Some(theirs) => negotiate(requested_v, &theirs).ok_or_else(|| {
                CniError::new(
                    Code::IncompatibleVersion,
                    format!("ipam plugin {plugin} shares no CNI version with ferry up to {requested}"),
                )
                .with_details(format!(
                    "{plugin} supports {}; ferry supports {}",
                    theirs.join(", "),
                    SUPPORTED_VERSIONS.join(", ")
                ))
            })?,
        };
        let stdin = if version == requested_v { raw.to_vec() } else { reshape(raw, version)? };
        Ok(Self { plugin: plugin.to_string(), bin, version, stdin })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Runs the delegate for `cmd`; its parsed stdout (None when empty, or
    /// when `cmd` does not exist in the negotiated version).
    pub fn exec(&self, cmd: Command) -> Result<Option<Value>> {
        if self.version < introduced(cmd) {
            let Version(a, b, c) = self.version;
            eprintln!(
                "ferry: {} not delegated: ipam plugin {} speaks CNI {a}.{b}.{c} at most, which has no {}",
                cmd.as_str(),
                self.plugin,
                cmd.as_str()
            );
            return Ok(None);
        }
        run(&self.bin, &self.plugin, cmd, &self.stdin)
    }
}

/// The runtime's config with `cniVersion` set to `to`, and its prevResult
/// (if any) shaped for that version.
fn reshape(raw: &[u8], to: Version) -> Result<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(raw)
        .map_err(|e| CniError::new(Code::Decode, "network configuration is not valid JSON").with_details(e))?;
    let Version(a, b, c) = to;
    let to_s = format!("{a}.{b}.{c}");
    let o =
        v.as_object_mut().ok_or_else(|| CniError::new(Code::Decode, "network configuration must be a JSON object"))?;
    o.remove("cniVersions");
    if let Some(prev) = o.get("prevResult").filter(|p| !p.is_null()) {
        let shaped = CniResult::from_value(prev)?.to_json(&to_s);
        o.insert("prevResult".into(), shaped);
    }
    o.insert("cniVersion".into(), Value::String(to_s));
    Ok(serde_json::to_vec(&v).expect("a Value serializes"))
}

/// Runs the plugin with our own environment (the runtime's CNI_* variables)
/// but CNI_COMMAND, and `stdin`.
fn run(bin: &PathBuf, plugin: &str, cmd: Command, stdin: &[u8]) -> Result<Option<Value>> {
    let mut child = Process::new(bin)
        .env("CNI_COMMAND", cmd.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(Code::Delegate, format!("cannot execute {}", bin.display())).with_details(e))?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin may exit without reading stdin; its exit status tells.
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(Code::Delegate, format!("waiting for {}", bin.display())).with_details(e))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        if let Some(v) = &parsed {
            if let Some(code) = v.get("code").and_then(Value::as_u64) {
                return Err(CniError {
                    code: code as u32,
                    msg: format!("{plugin}: {}", v.get("msg").and_then(Value::as_str).unwrap_or("")),
                    details: v.get("details").and_then(Value::as_str).unwrap_or("").to_string(),
                });
            }
        }
        return Err(CniError::new(Code::Delegate, format!("{plugin} {} failed ({})", cmd.as_str(), out.status))
            .with_details(String::from_utf8_lossy(&out.stdout)));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parsed.map(Some).ok_or_else(|| {
        CniError::new(Code::Delegate, format!("{plugin} printed a result that is not JSON"))
            .with_details(String::from_utf8_lossy(&out.stdout))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn negotiation_picks_the_highest_shared_version_not_above_the_request() {
        let host_local = vs(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
        // (requested, theirs, expected)
        let rows: [(Version, &[String], Option<Version>); 5] = [
            // host-local 1.1.1 under a 1.1.0 conflist: 1.0.0
            (Version::V1_1_0, &host_local, Some(Version::V1_0_0)),
            // never above what the runtime asked for
            (Version(0, 3, 1), &host_local, Some(Version(0, 3, 1))),
            (Version::V0_4_0, &host_local, Some(Version::V0_4_0)),
            // a plugin newer than us: our newest
            (Version::V1_1_0, &vs(&["1.0.0", "1.1.0", "1.2.0"]), Some(Version::V1_1_0)),
            // nothing shared at or below the request
            (Version(0, 3, 1), &vs(&["1.0.0"]), None),
        ];
        for (req, theirs, want) in rows {
            assert_eq!(negotiate(req, theirs), want, "{req:?} vs {theirs:?}");
        }
    }

    #[test]
    fn reshaped_config_carries_the_negotiated_version_and_prev_result() {
        let raw = serde_json::json!({
            "cniVersion": "1.1.0", "name": "n", "type": "ferry", "ipam": {"type": "host-local"},
            "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mtu": 1400}],
                           "ips": [{"address": "10.0.0.2/24", "interface": 0}]},
        });
        let out: Value =
            serde_json::from_slice(&reshape(&serde_json::to_vec(&raw).unwrap(), Version::V0_4_0).unwrap()).unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["prevResult"]["cniVersion"], "0.4.0");
        assert_eq!(out["prevResult"]["ips"][0]["version"], "4", "0.4.0 results name the IP version");
        assert!(out["prevResult"]["interfaces"][0].get("mtu").is_none(), "no 1.1.0 keys below 1.1.0");
        assert_eq!(out["ipam"]["type"], "host-local", "everything else untouched");
    }

    #[test]
    fn operations_newer_than_the_negotiated_version_are_not_delegated() {
        let d = Delegate {
            plugin: "old".into(),
            bin: PathBuf::from("/nonexistent/old"),
            version: Version(0, 3, 1),
            stdin: vec![],
        };
        // Not run at all (the binary does not exist), and not an error.
        for cmd in [Command::Check, Command::Status, Command::Gc] {
            assert_eq!(d.exec(cmd).unwrap(), None, "{cmd:?}");
        }
        assert!(d.exec(Command::Del).is_err(), "DEL exists in 0.3.1: it is run");
    }
}
