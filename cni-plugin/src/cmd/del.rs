//! DEL: idempotent. The host-side veth name is derived from (container id,
//! ifname), so DEL needs neither the netns (it may be gone) nor the ADD's
//! result: deleting the host end removes the pair; then the addresses are
//! released. The link goes first so an address is never free while an
//! interface still holds it; if that fails the runtime retries DEL.

use ferry_netlink::Netlink;

use crate::delegate::Delegate;
use crate::env::{Command, Env};
use crate::error::Result;
use crate::ipam;
use crate::names;
use crate::netconf::{Config, Ipam};

pub fn run(cfg: &Config, env: &Env) -> Result<()> {
    let nl = Netlink::open()?;
    let host = names::host_veth(&env.container_id, &env.ifname);
    // Link pins first (they hold the tcx links); if the veth is already gone,
    // sweep the pins of every vanished interface instead.
    let ifindex = nl.link(&host)?.map(|l| l.index);
    crate::datapath::detach(&cfg.conf.pin_dir, ifindex)?;
    nl.del_link(&host)?;
    match &cfg.ipam {
        Ipam::Builtin(ic) => {
            ipam::release(ic, &cfg.conf.name, &env.container_id, &env.ifname)?;
        }
        Ipam::Delegated(t) => {
            Delegate::new(t, env, &cfg.version, &cfg.raw)?.exec(Command::Del)?;
        }
    }
    Ok(())
}
