//! STATUS (CNI 1.1): can this plugin serve an ADD right now? Code 50 when it
//! cannot: the IPAM data dir is not writable, a range set has no free
//! address, or the bridge name is taken by a device that is not a bridge.

use ferry_netlink::Netlink;

use crate::delegate::Delegate;
use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::ipam;
use crate::netconf::{Config, Ipam};

pub fn run(cfg: &Config, env: &Env) -> Result<()> {
    match &cfg.ipam {
        Ipam::Builtin(ic) => ipam::status(ic, &cfg.conf.name)?,
        Ipam::Delegated(t) => {
            Delegate::new(t, env, &cfg.version, &cfg.raw)?.exec(Command::Status)?;
        }
    }
    let nl = Netlink::open()?;
    if let Some(l) = nl.link(&cfg.conf.bridge).or_else(|e| match e {
        ferry_netlink::Error::WrongKind { .. } => Ok(None),
        e => Err(e),
    })? {
        if l.kind.as_deref() != Some("bridge") {
            return Err(CniError::new(Code::NotAvailable, format!("{} exists and is not a bridge", cfg.conf.bridge)));
        }
    }
    Ok(())
}
