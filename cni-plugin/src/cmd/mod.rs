//! One module per CNI operation, and the dispatch between them.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use serde_json::Value;

use ferry_netlink::Netns;

use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::ipam::cidr::Cidr;
use crate::netconf::{peek_version, Config};
use crate::result::{check_version, Version, LATEST, SUPPORTED_VERSIONS};

/// Runs one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)`
/// means success with no output (DEL, CHECK, STATUS, GC).
pub fn run(get_env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>> {
    let command = match get_env("CNI_COMMAND").filter(|c| !c.is_empty()) {
        Some(c) => Command::parse(&c)?,
        None => return Err(CniError::new(Code::InvalidEnv, "required environment variable CNI_COMMAND is missing")),
    };
    if command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    // Like libcni's skel: the environment is checked before stdin is parsed.
    let env = Env::from_vars(command, get_env)?;
    let cfg = Config::parse(stdin)?;
    let at_least = |min: Version| -> Result<()> {
        let v = check_version(&cfg.version)?;
        if v < min {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {} does not support {}", cfg.version, command.as_str()),
            )
            .with_details(format!(
                "{} needs cniVersion {}.{}.{} or later",
                command.as_str(),
                min.0,
                min.1,
                min.2
            )));
        }
        Ok(())
    };
    match command {
        Command::Add => add::run(&cfg, &env).map(Some),
        Command::Del => del::run(&cfg, &env).map(|_| None),
        Command::Check => {
            at_least(Version::V0_4_0)?;
            check::run(&cfg, &env).map(|_| None)
        }
        Command::Status => {
            at_least(Version::V1_1_0)?;
            status::run(&cfg, &env).map(|_| None)
        }
        Command::Gc => {
            at_least(Version::V1_1_0)?;
            gc::run(&cfg, &env).map(|_| None)
        }
        Command::Version => unreachable!("handled above"),
    }
}

/// VERSION: SPEC.md "cniVersion: the value of cniVersion specified on
/// input"; the runtime compares it with `supportedVersions` itself.
fn version(stdin: &[u8]) -> Value {
    let asked = peek_version(stdin).filter(|v| !v.is_empty());
    serde_json::json!({
        "cniVersion": asked.as_deref().unwrap_or(LATEST),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// Opens CNI_NETNS: a path that does not exist is "container unknown" (3),
/// anything else unusable is an invalid CNI_NETNS (4).
pub fn open_netns(path: &str) -> Result<Netns> {
    Netns::open(path).map_err(|e| {
        let missing =
            matches!(&e, ferry_netlink::Error::Netns { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
        if missing {
            CniError::new(Code::UnknownContainer, format!("network namespace {path} does not exist"))
        } else {
            CniError::new(Code::InvalidEnv, format!("CNI_NETNS {path} is not a usable network namespace"))
                .with_details(e)
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn default_route(self) -> Cidr {
        match self {
            Family::V4 => Cidr { addr: std::net::Ipv4Addr::UNSPECIFIED.into(), prefix: 0 },
            Family::V6 => Cidr { addr: std::net::Ipv6Addr::UNSPECIFIED.into(), prefix: 0 },
        }
    }
}

/// The node routes between the bridge and other interfaces when it is the
/// pods' gateway. Written only when not already on (the common case costs
/// one read).
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<()> {
    let mut keys = vec![];
    if v4 {
        keys.push("/proc/sys/net/ipv4/ip_forward");
    }
    if v6 {
        keys.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for k in keys {
        let on = std::fs::read_to_string(k).map(|s| s.trim() == "1").unwrap_or(false);
        if !on {
            std::fs::write(k, "1")
                .map_err(|e| CniError::new(Code::Io, format!("enabling forwarding ({k})")).with_details(e))?;
        }
    }
    Ok(())
}
