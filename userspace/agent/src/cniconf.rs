//! This node's CNI configuration, from its Node's `spec.podCIDRs`: one IPAM
//! range set per family (the built-in IPAM), a default route per family,
//! and the data-path settings the plugin needs (bridge, MTU, pin dir).
//!
//! Written atomically (a temporary file in the same directory, fsynced,
//! then renamed), and only when its content changes: the kubelet (libcni)
//! reads the directory at any moment and must never see half a file.
//! Until the Node has a pod CIDR nothing is written, so the kubelet keeps
//! reporting the network as not ready, which is the truth.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ferry_state::{Catalog, Changes, Snapshot};
use ipnetwork::IpNetwork;
use serde_json::json;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// What goes into the conflist besides the pod CIDRs.
#[derive(Debug, Clone)]
pub struct CniSettings {
    pub path: PathBuf,
    pub node_name: String,
    pub pin_dir: PathBuf,
    pub bridge: String,
    pub mtu: u32,
}

/// The conflist for these pod CIDRs (`None`: no usable CIDR). CIDRs that do
/// not parse are reported and left out; at most one per family is used, as
/// Kubernetes allocates (dual-stack: one IPv4 and one IPv6).
pub fn conflist(settings: &CniSettings, pod_cidrs: &[String]) -> Option<String> {
    let mut v4 = None;
    let mut v6 = None;
    for cidr in pod_cidrs {
        match cidr.parse::<IpNetwork>() {
            // The network address, as the IPAM expects a subnet.
            Ok(IpNetwork::V4(n)) if v4.is_none() => v4 = Some(format!("{}/{}", n.network(), n.prefix())),
            Ok(IpNetwork::V6(n)) if v6.is_none() => v6 = Some(format!("{}/{}", n.network(), n.prefix())),
            Ok(_) => warn!(node = %settings.node_name, cidr, "a second pod CIDR of one family is ignored"),
            Err(e) => warn!(node = %settings.node_name, cidr, error = %e, "pod CIDR is not a CIDR; ignored"),
        }
    }
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    if let Some(s) = &v4 {
        ranges.push(json!([{ "subnet": s }]));
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if let Some(s) = &v6 {
        ranges.push(json!([{ "subnet": s }]));
        routes.push(json!({ "dst": "::/0" }));
    }
    if ranges.is_empty() {
        return None;
    }
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "ferry",
        "plugins": [
            {
                "type": "ferry",
                "bridge": settings.bridge,
                "mtu": settings.mtu,
                "hairpinMode": true,
                "pinDir": settings.pin_dir,
                "ipam": {
                    "type": "ferry",
                    "ranges": ranges,
                    "routes": routes,
                    "dataDir": "/var/lib/cni/networks"
                }
            },
            // hostPort, as Flannel's default conflist chains it.
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    let mut text = serde_json::to_string_pretty(&conf).expect("a JSON value serializes");
    text.push('\n');
    Some(text)
}

/// Write `text` to `path` unless it already holds exactly that. Returns
/// whether it wrote.
pub fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A dot file: libcni reads only *.conf, *.conflist and *.json.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })?;
    Ok(true)
}

/// Follow the catalog and keep the conflist in line with this node's Node,
/// with the pod MTU from `mtu` (the routing task's, which knows the
/// underlay and the tunnels): nothing is written before it is known, and a
/// new MTU rewrites the conflist (pods created after it get it).
pub async fn follow(
    mut rx: watch::Receiver<Snapshot>,
    mut settings: CniSettings,
    mut mtu: watch::Receiver<Option<u32>>,
) {
    let mut last: Option<(Changes, Vec<String>, u32)> = None;
    let mut mtu_open = true;
    loop {
        let pod_mtu = *mtu.borrow_and_update();
        let snap = rx.borrow_and_update().clone();
        if let (true, Some(pod_mtu)) = (snap.ready, pod_mtu) {
            let cat: &Arc<Catalog> = &snap.catalog;
            let relevant = match &last {
                Some((changes, _, written)) => {
                    *written != pod_mtu
                        || cat.changes.since(changes).is_none_or(|c| c.nodes.contains(settings.node_name.as_str()))
                }
                None => true,
            };
            if relevant {
                settings.mtu = pod_mtu;
                let cidrs = cat.node(&settings.node_name).map(|n| n.pod_cidrs.clone()).unwrap_or_default();
                apply(&settings, last.as_ref().map(|(_, c, _)| c.as_slice()), &cidrs);
                last = Some((cat.changes.clone(), cidrs, pod_mtu));
            } else if let Some((changes, _, _)) = &mut last {
                *changes = cat.changes.clone();
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = mtu.changed(), if mtu_open => if r.is_err() { mtu_open = false },
        }
    }
}

fn apply(settings: &CniSettings, before: Option<&[String]>, cidrs: &[String]) {
    if let Some(before) = before.filter(|b| !b.is_empty() && *b != cidrs) {
        // Pods keep their addresses until deleted; new pods get the new
        // range. Routes to the old range from other nodes go stale.
        error!(
            node = %settings.node_name,
            was = ?before,
            now = ?cidrs,
            "THIS NODE'S POD CIDR CHANGED: existing pods keep addresses from the old range until they are deleted"
        );
    }
    match conflist(settings, cidrs) {
        None => {
            if before.is_none() {
                info!(node = %settings.node_name, "the Node has no pod CIDR yet: no CNI configuration written");
            }
        }
        Some(text) => match write_if_changed(&settings.path, &text) {
            Ok(true) => info!(path = %settings.path.display(), pod_cidrs = ?cidrs, "CNI configuration written"),
            Ok(false) => {}
            Err(e) => error!(error = %e, "writing the CNI configuration failed"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> CniSettings {
        CniSettings {
            path: dir.join("10-ferry.conflist"),
            node_name: "n1".into(),
            pin_dir: "/sys/fs/bpf/ferry".into(),
            bridge: "ferry0".into(),
            mtu: 1500,
        }
    }

    #[test]
    fn one_range_set_and_route_per_family() {
        let s = settings(Path::new("/x"));
        let text = conflist(&s, &["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "ferry");
        assert_eq!(p["pinDir"], "/sys/fs/bpf/ferry");
        assert_eq!(p["ipam"]["ranges"], json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]));
        assert_eq!(p["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
        // Host bits are cleared; a second range of one family and junk are ignored.
        let text = conflist(&s, &["10.244.1.7/24".into(), "10.9.0.0/16".into(), "nope".into()]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["plugins"][0]["ipam"]["ranges"], json!([[{"subnet": "10.244.1.0/24"}]]));
        assert_eq!(conflist(&s, &[]), None);
        assert_eq!(conflist(&s, &["nope".into()]), None);
    }

    #[test]
    fn written_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.d/10-ferry.conflist");
        assert!(write_if_changed(&path, "a\n").unwrap());
        assert!(!write_if_changed(&path, "a\n").unwrap(), "same content: untouched");
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!write_if_changed(&path, "a\n").unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert!(write_if_changed(&path, "b\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["10-ferry.conflist"], "no temporary file left behind");
    }

    #[tokio::test]
    async fn follows_the_nodes_pod_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let node = |cidrs: &str| {
            ferry_state::Catalog::from_yaml(&format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{podCIDRs: [{cidrs}]}}\n"
            ))
            .unwrap()
        };
        let mut feed = ferry_state::Feed::new();
        let (tx, rx) = watch::channel(Snapshot { catalog: feed.publish(&node("")), ready: true, generation: 1 });
        let (_mtu_tx, mtu_rx) = watch::channel(Some(1450));
        let task = tokio::spawn(follow(rx, s.clone(), mtu_rx));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!s.path.exists(), "no pod CIDR: no conflist");
        tx.send(Snapshot { catalog: feed.publish(&node("10.244.3.0/24")), ready: true, generation: 2 }).unwrap();
        let mut text = String::new();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if let Ok(t) = std::fs::read_to_string(&s.path) {
                text = t;
                break;
            }
        }
        assert!(text.contains("10.244.3.0/24"), "{text}");
        assert!(text.contains("\"mtu\": 1450"), "the routing task's MTU: {text}");
        drop(tx);
        task.await.unwrap();
    }
}
