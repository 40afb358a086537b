//! The data-path step of ADD and DEL: put the pinned from-pod / to-pod
//! programs (loaded by ferry-agent under the netconf's `pinDir`) on a pod's
//! host veth, and take them off again.
//!
//! Cheap by design: the plugin never parses the eBPF object, it opens the
//! pinned programs and creates two tcx links, pinned so they outlive this
//! short-lived process. When nothing is pinned yet (the agent has not
//! started), ADD proceeds without attaching; the agent's attach-watcher
//! attaches to the veth when it comes up.

use std::{net::IpAddr, path::Path};

use crate::error::{CniError, Code, Result};

/// Attaches to the pod's host veth `ifindex` (of this process's namespace,
/// the node's) and registers the pod's addresses and MAC as a local
/// endpoint (so Service traffic to it skips the node's stack). Returns false
/// when the data path is not loaded.
pub fn attach(pin_dir: &Path, ifindex: u32, ifname: &str, pod_mac: [u8; 6], ips: &[IpAddr]) -> Result<bool> {
    if !ferry_datapath::programs_pinned(pin_dir) {
        return Ok(false);
    }
    let fail = |e: ferry_datapath::Error| {
        CniError::new(Code::Internal, format!("attaching the data path to {ifname}")).with_details(e)
    };
    ferry_datapath::register_endpoint(pin_dir, ifindex, pod_mac, ips).map_err(fail)?;
    if let Err(e) = ferry_datapath::attach(pin_dir, ifindex) {
        // The veth is about to be undone: leave no entry pointing at it.
        let _ = ferry_datapath::unregister_endpoints(pin_dir, Some(ifindex));
        return Err(fail(e));
    }
    Ok(true)
}

/// Removes the link pins and endpoint entries of the pod's host veth: by
/// index while it still exists (call before deleting it), else those of
/// every interface that is gone.
pub fn detach(pin_dir: &Path, ifindex: Option<u32>) -> Result<()> {
    if !pin_dir.join("links").exists() {
        return Ok(());
    }
    let res = match ifindex {
        Some(i) => ferry_datapath::detach(pin_dir, i).map(drop),
        None => ferry_datapath::gc_links(pin_dir).map(drop),
    };
    res.and_then(|()| ferry_datapath::unregister_endpoints(pin_dir, ifindex).map(drop))
        .map_err(|e| CniError::new(Code::Io, "removing the pod from the data path").with_details(e))
}
