//! GC (CNI 1.1): release everything of this network that belongs to an
//! attachment not in `cni.dev/valid-attachments`: the IPAM reservations and,
//! for each released owner, its host veth if one is still there (a pod whose
//! DEL never came). Scoped by this network's reservations, so pods of
//! another network sharing the bridge are never touched.

use ferry_netlink::Netlink;

use crate::delegate::Delegate;
use crate::env::{Command, Env};
use crate::error::Result;
use crate::ipam;
use crate::names;
use crate::netconf::{Config, Ipam};

pub fn run(cfg: &Config, env: &Env) -> Result<()> {
    let valid = cfg.valid_attachments();
    match &cfg.ipam {
        Ipam::Builtin(ic) => {
            let released = ipam::gc(ic, &cfg.conf.name, &valid)?;
            if !released.is_empty() {
                let nl = Netlink::open()?;
                let mut seen = std::collections::HashSet::new();
                for r in released {
                    if seen.insert((r.container_id.clone(), r.ifname.clone())) && !r.ifname.is_empty() {
                        nl.del_link(&names::host_veth(&r.container_id, &r.ifname))?;
                    }
                }
            }
        }
        Ipam::Delegated(t) => {
            Delegate::new(t, env, &cfg.version, &cfg.raw)?.exec(Command::Gc)?;
        }
    }
    Ok(())
}
