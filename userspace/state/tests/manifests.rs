//! The install manifests (`manifests/*.yaml`) checked the way `kubectl apply`
//! and the kubelet would find problems: every document is a known Kubernetes
//! object with no misspelt field, every reference resolves (service
//! accounts, roles, config maps, volumes), the permissions cover the watches,
//! the kube-dns Service is what pods expect, the CNI install script really
//! installs, and every command-line flag exists in the binary it is given to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let dir = repo_root().join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests missing: {files:?}");
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.file_name().unwrap().to_string_lossy().into_owned(), v));
            }
        }
    }
    docs
}

/// Every key of `orig` must survive a round trip through the typed object:
/// k8s-openapi drops unknown fields, so a lost key is a misspelt field that
/// the API server would reject (or, worse, silently ignore).
fn assert_known_fields(orig: &Value, typed: &Value, path: &str) {
    match (orig, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                let tv = t.get(k).unwrap_or_else(|| panic!("unknown field {p}"));
                assert_known_fields(v, tv, &p);
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            assert_eq!(o.len(), t.len(), "{path}");
            for (i, (a, b)) in o.iter().zip(t).enumerate() {
                assert_known_fields(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
    assert_known_fields(doc, &serde_json::to_value(&t).unwrap(), &format!("{file}: {name}"));
    t
}

/// Add a typed object; whether the name was already taken.
fn put<T: DeserializeOwned + serde::Serialize>(
    map: &mut BTreeMap<String, T>,
    name: &str,
    file: &str,
    doc: &Value,
) -> bool {
    map.insert(name.to_string(), typed(file, doc)).is_some()
}

/// All objects, by kind, by name (all live in kube-system or are cluster-wide).
#[derive(Default)]
struct Objects {
    service_accounts: BTreeMap<String, ServiceAccount>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    bindings: BTreeMap<String, ClusterRoleBinding>,
    config_maps: BTreeMap<String, ConfigMap>,
    daemon_sets: BTreeMap<String, DaemonSet>,
    deployments: BTreeMap<String, Deployment>,
    services: BTreeMap<String, (Service, Value)>,
    pdbs: BTreeMap<String, PodDisruptionBudget>,
}

fn objects() -> Objects {
    let mut o = Objects::default();
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{file}: document without kind"));
        let name =
            doc["metadata"]["name"].as_str().unwrap_or_else(|| panic!("{file}: {kind} without name")).to_string();
        if !matches!(kind, "ClusterRole" | "ClusterRoleBinding") {
            assert_eq!(doc["metadata"]["namespace"], "kube-system", "{file}: {kind} {name}");
        }
        let dup = match kind {
            "ServiceAccount" => put(&mut o.service_accounts, &name, &file, &doc),
            "ClusterRole" => put(&mut o.cluster_roles, &name, &file, &doc),
            "ClusterRoleBinding" => put(&mut o.bindings, &name, &file, &doc),
            "ConfigMap" => put(&mut o.config_maps, &name, &file, &doc),
            "DaemonSet" => put(&mut o.daemon_sets, &name, &file, &doc),
            "Deployment" => put(&mut o.deployments, &name, &file, &doc),
            "PodDisruptionBudget" => put(&mut o.pdbs, &name, &file, &doc),
            "Service" => {
                let svc = typed(&file, &doc);
                o.services.insert(name.clone(), (svc, doc.clone())).is_some()
            }
            other => panic!("{file}: unexpected kind {other}"),
        };
        assert!(!dup, "{file}: {kind} {name} declared twice");
    }
    o
}

/// Service account, config maps and volumes of a pod all resolve.
fn check_pod(
    o: &Objects,
    what: &str,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    pod: &PodSpec,
) {
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "{what}: selector {k}={v} does not match the pod template");
    }
    let sa = pod.service_account_name.as_deref().unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
    assert!(o.service_accounts.contains_key(sa), "{what}: service account {sa} not declared");
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    for v in volumes {
        if let Some(cm) = &v.config_map {
            assert!(
                o.config_maps.contains_key(&cm.name),
                "{what}: volume {} uses undeclared ConfigMap {}",
                v.name,
                cm.name
            );
        }
    }
    let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
    for c in containers {
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.iter().any(|v| v.name == m.name),
                "{what}: {}: mount of undeclared volume {}",
                c.name,
                m.name
            );
        }
    }
}

#[test]
fn every_document_is_a_known_object_and_references_resolve() {
    let o = objects();
    for (name, b) in &o.bindings {
        assert!(o.cluster_roles.contains_key(&b.role_ref.name), "binding {name}: no ClusterRole {}", b.role_ref.name);
        for s in b.subjects.iter().flatten() {
            assert!(o.service_accounts.contains_key(&s.name), "binding {name}: no ServiceAccount {}", s.name);
        }
    }
    for (name, ds) in &o.daemon_sets {
        let spec = ds.spec.as_ref().unwrap();
        let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        check_pod(&o, name, &labels, &selector, spec.template.spec.as_ref().unwrap());
    }
    for (name, d) in &o.deployments {
        let spec = d.spec.as_ref().unwrap();
        let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        check_pod(&o, name, &labels, &selector, spec.template.spec.as_ref().unwrap());
    }
}

/// What each component watches must be listable and watchable.
#[test]
fn rbac_covers_the_watches() {
    let o = objects();
    let grants = |sa: &str, group: &str, resource: &str, verb: &str| {
        o.bindings.values().filter(|b| b.subjects.iter().flatten().any(|s| s.name == sa)).any(|b| {
            o.cluster_roles[&b.role_ref.name].rules.iter().flatten().any(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        })
    };
    for (sa, needs) in [
        ("ferry-agent", &[("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes")][..]),
        ("ferry-dns", &[("", "services"), ("discovery.k8s.io", "endpointslices")][..]),
    ] {
        for (group, resource) in needs {
            for verb in ["list", "watch"] {
                assert!(grants(sa, group, resource, verb), "{sa} cannot {verb} {resource}");
            }
        }
    }
    // Read-only: nothing may write to the API.
    for role in o.cluster_roles.values() {
        for r in role.rules.iter().flatten() {
            assert!(r.verbs.iter().all(|v| matches!(v.as_str(), "get" | "list" | "watch")), "{:?}", r.verbs);
        }
    }
}

#[test]
fn agent_daemonset_has_the_node_access_it_needs() {
    let o = objects();
    let ds = &o.daemon_sets["ferry-agent"];
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true), "the agent works on the node's own links");
    assert!(
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "must run on every node"
    );
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    assert_eq!(agent.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let mount = |c: &k8s_openapi::api::core::v1::Container, path: &str| {
        c.volume_mounts.iter().flatten().find(|m| m.mount_path == path).map(|m| m.name.clone())
    };
    let host_path = |vol: &str| {
        pod.volumes.iter().flatten().find(|v| v.name == vol).and_then(|v| v.host_path.clone()).map(|h| h.path)
    };
    assert_eq!(host_path(&mount(agent, "/sys/fs/bpf").expect("bpffs mounted")).as_deref(), Some("/sys/fs/bpf"));
    // The CNI install init container writes to the host's CNI directories.
    let install =
        pod.init_containers.iter().flatten().find(|c| c.name == "install-cni").expect("install-cni init container");
    assert_eq!(host_path(&mount(install, "/host/opt/cni/bin").unwrap()).as_deref(), Some("/opt/cni/bin"));
    assert_eq!(host_path(&mount(install, "/host/etc/cni/net.d").unwrap()).as_deref(), Some("/etc/cni/net.d"));
}

#[test]
fn kube_dns_service_is_what_pods_expect() {
    let o = objects();
    let (_, raw) = &o.services["kube-dns"];
    // Through the catalog's own conversion: the address the kubelet hands
    // pods as their nameserver, DNS on UDP and TCP.
    let svc = ferry_state::convert::service(&serde_json::from_value(raw.clone()).unwrap()).unwrap();
    assert_eq!(svc.cluster_ips, ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]);
    let has = |proto, port| svc.ports.iter().any(|p| p.protocol == proto && p.port == port);
    assert!(has(ferry_state::Protocol::Udp, 53) && has(ferry_state::Protocol::Tcp, 53));
    // It selects the ferry-dns pods.
    let selector = o.services["kube-dns"].0.spec.as_ref().unwrap().selector.clone().unwrap();
    let dns = &o.deployments["ferry-dns"];
    let labels = dns.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "kube-dns selector {k}={v}");
    }
}

fn config_data(key: &str) -> String {
    objects().config_maps["ferry-config"].data.as_ref().unwrap()[key].clone()
}

/// Run install-cni.sh as the init container would, against a fake host root.
/// `env` adds variables; `fake_api` makes a `curl` on PATH that prints that
/// Node JSON (as the API server would) plus a service-account directory.
fn run_install(env: &[(&str, &str)], fake_api: Option<&str>) -> (std::process::Output, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("etc-ferry");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(cfg.join("install-cni.sh"), config_data("install-cni.sh")).unwrap();
    std::fs::write(cfg.join("10-ferry.conflist.template"), config_data("10-ferry.conflist.template")).unwrap();
    let bin = root.path().join("ferry-binary");
    std::fs::write(&bin, b"#!/bin/sh\necho ferry\n").unwrap();
    let fake_bin = root.path().join("fake-bin");
    std::fs::create_dir(&fake_bin).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(cfg.join("install-cni.sh"))
        .env_clear()
        .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake_bin.display()))
        .env("HOST_ROOT", root.path().join("host"))
        .env("CONFIG_DIR", &cfg)
        .env("FERRY_BIN", &bin)
        .env("NODE_NAME", "node-1");
    if let Some(node_json) = fake_api {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(root.path().join("node.json"), node_json).unwrap();
        let curl = fake_bin.join("curl");
        std::fs::write(&curl, format!("#!/bin/sh\ncat {}\n", root.path().join("node.json").display())).unwrap();
        std::fs::set_permissions(&curl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sa = root.path().join("sa");
        std::fs::create_dir(&sa).unwrap();
        std::fs::write(sa.join("token"), "t").unwrap();
        cmd.env("SA_DIR", &sa).env("KUBERNETES_SERVICE_HOST", "10.96.0.1").env("KUBERNETES_SERVICE_PORT", "443");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.output().unwrap(), root)
}

/// The installed conflist, parsed; panics with the script's stderr on failure.
fn installed(out: &std::process::Output, root: &tempfile::TempDir) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conf = std::fs::read(root.path().join("host/etc/cni/net.d/10-ferry.conflist")).unwrap();
    serde_json::from_slice(&conf).expect("the installed conflist is JSON")
}

#[test]
fn install_cni_script_installs_binary_and_conflist() {
    let (out, root) = run_install(&[("POD_CIDR", "10.244.7.0/24")], None);
    let conf = installed(&out, &root);
    assert_eq!(conf["cniVersion"], "1.1.0");
    assert_eq!(conf["plugins"][0]["type"], "ferry");
    assert_eq!(conf["plugins"][0]["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.244.7.0/24"}]]));
    assert_eq!(conf["plugins"][0]["ipam"]["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}]));
    let host = root.path().join("host");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(host.join("opt/cni/bin/ferry")).unwrap().permissions().mode() & 0o777, 0o755);
    // Only the two installed files: no temporaries left behind.
    let leftovers: Vec<_> = ["opt/cni/bin", "etc/cni/net.d"]
        .iter()
        .flat_map(|d| std::fs::read_dir(host.join(d)).unwrap().map(|e| e.unwrap().file_name()))
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn install_cni_script_reads_dual_stack_cidrs_from_the_node() {
    // As the API server prints a Node (pretty JSON).
    let node = r#"{
  "kind": "Node",
  "apiVersion": "v1",
  "metadata": {"name": "node-1"},
  "spec": {
    "podCIDR": "10.244.3.0/24",
    "podCIDRs": [
      "10.244.3.0/24",
      "fd00:10:244:3::/64"
    ]
  },
  "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.3"}]}
}"#;
    let (out, root) = run_install(&[], Some(node));
    let conf = installed(&out, &root);
    let ipam = &conf["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"], serde_json::json!([[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]));
    assert_eq!(ipam["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
    // An older cluster: only spec.podCIDR.
    let (out, root) = run_install(&[], Some(r#"{"kind":"Node","spec":{"podCIDR":"10.244.4.0/24"}}"#));
    assert_eq!(
        installed(&out, &root)["plugins"][0]["ipam"]["ranges"],
        serde_json::json!([[{"subnet": "10.244.4.0/24"}]])
    );
}

#[test]
fn install_cni_script_fails_clearly_without_a_pod_cidr() {
    for (env, api) in [
        (&[][..], None),                                 // no POD_CIDR, no API server
        (&[("POD_CIDR", "not-a-cidr")][..], None),       // garbage
        (&[][..], Some(r#"{"kind":"Node","spec":{}}"#)), // node without a pod CIDR
    ] {
        let (out, root) = run_install(env, api);
        assert!(!out.status.success(), "{env:?} {api:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("install-cni:") && (err.contains("POD_CIDR") || err.contains("pod CIDR")),
            "{env:?}: {err}"
        );
        assert!(!root.path().join("host/etc/cni/net.d/10-ferry.conflist").exists(), "no config on failure");
        assert!(!root.path().join("host/opt/cni/bin/ferry").exists(), "nothing installed on failure");
    }
}

/// Every `--flag` the manifests pass exists in the binary's `--help`. The
/// binaries are built by `make build` before `make test`; when this crate is
/// tested alone without them, say so instead of guessing.
#[test]
fn command_line_flags_exist() {
    let o = objects();
    let pods = o
        .daemon_sets
        .values()
        .map(|d| d.spec.as_ref().unwrap().template.spec.clone().unwrap())
        .chain(o.deployments.values().map(|d| d.spec.as_ref().unwrap().template.spec.clone().unwrap()));
    let mut checked = 0;
    for pod in pods {
        for c in &pod.containers {
            let Some(bin) = c.command.as_ref().and_then(|c| c.first()) else {
                continue;
            };
            let path = repo_root().join("target/release").join(bin);
            if !path.exists() {
                eprintln!("skipping {bin}: {} not built", path.display());
                continue;
            }
            let help = Command::new(&path).arg("--help").output().unwrap();
            let help = String::from_utf8_lossy(&help.stdout);
            for arg in c.args.iter().flatten() {
                let flag = arg.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("{flag} "))
                        || help.contains(&format!("{flag}\n"))
                        || help.contains(&format!("{flag} <")),
                    "{bin} has no flag {flag}"
                );
                checked += 1;
            }
        }
    }
    eprintln!("{checked} flags checked against the built binaries");
}
