//! The data-path step of ADD and DEL: put the pinned from-pod / to-pod
//! programs (loaded by ferry-agent under the netconf's `pinDir`) on a pod's
//! host veth, and take them off again.
//!
//! Cheap by design: the plugin never parses the eBPF object, it opens the
//! pinned programs and creates two tcx links, pinned so they outlive this
//! short-lived process. When nothing is pinned yet (the agent has not
//! started), ADD proceeds without attaching; the agent's attach-watcher
//! attaches to the veth when it comes up.

use std::path::Path;

use crate::error::{Code, CniError, Result};

/// Attaches to interface `ifindex` (of this process's namespace, the
/// node's). Returns false when the data path is not loaded.
pub fn attach(pin_dir: &Path, ifindex: u32, ifname: &str) -> Result<bool> {
    if !ferry_datapath::programs_pinned(pin_dir) {
        return Ok(false);
    }
    ferry_datapath::attach(pin_dir, ifindex).map_err(|e| {
        CniError::new(Code::Internal, format!("attaching the data path to {ifname}"))
            .with_details(e)
    })?;
    Ok(true)
}

/// Removes the link pins of the pod's host veth: by index while it still
/// exists (call before deleting it), else every pin whose interface is gone.
pub fn detach(pin_dir: &Path, ifindex: Option<u32>) -> Result<()> {
    if !pin_dir.join("links").exists() {
        return Ok(());
    }
    let res = match ifindex {
        Some(i) => ferry_datapath::detach(pin_dir, i).map(drop),
        None => ferry_datapath::gc_links(pin_dir).map(drop),
    };
    res.map_err(|e| CniError::new(Code::Io, "removing data path link pins").with_details(e))
}
