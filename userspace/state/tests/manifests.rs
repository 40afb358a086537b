//! The install manifests (`manifests/*.yaml`) checked the way `kubectl apply`,
//! the kubelet and a security review would find problems:
//!
//! - every document is a known Kubernetes object with no misspelt field, by
//!   k8s-openapi's types here and by the Kubernetes OpenAPI schemas
//!   (`kubernetes-validate --strict`, 1.33 and the newest it ships);
//! - checkov's Kubernetes checks find nothing that is not fixed or skipped
//!   with a reason in the YAML;
//! - every reference resolves (service accounts, roles, config maps and
//!   their keys, volumes), RBAC is exactly what the components read;
//! - the agent DaemonSet, the DNS Deployment and the kube-dns Service are
//!   what nodes, pods and tools expect;
//! - every flag and environment variable given to a Ferry binary exists in
//!   that binary.
//!
//! The Python tools live in the venv scripts/bootstrap.sh makes
//! (`~/.cache/ferry/venv`, or `$FERRY_VENV`); without them the tests fail
//! and say so, they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// What each service account may do, and nothing more: (service account,
/// API group, resource, verb). The components list and watch (the state
/// crate's Kubernetes source); they never get single objects or write.
const RBAC: &[(&str, &str, &str, &str)] = &[
    ("ferry-agent", "", "services", "list"),
    ("ferry-agent", "", "services", "watch"),
    ("ferry-agent", "", "nodes", "list"),
    ("ferry-agent", "", "nodes", "watch"),
    ("ferry-agent", "discovery.k8s.io", "endpointslices", "list"),
    ("ferry-agent", "discovery.k8s.io", "endpointslices", "watch"),
    ("ferry-dns", "", "services", "list"),
    ("ferry-dns", "", "services", "watch"),
    ("ferry-dns", "discovery.k8s.io", "endpointslices", "list"),
    ("ferry-dns", "discovery.k8s.io", "endpointslices", "watch"),
];

/// The image every container runs (what `make image` tags).
fn image() -> String {
    format!("ghcr.io/ferry-project/ferry:{}", env!("CARGO_PKG_VERSION"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifest_files() -> Vec<PathBuf> {
    let dir = repo_root().join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests missing: {files:?}");
    files
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for f in manifest_files() {
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

/// A workload's pod template: (workload name, labels, selector, pod spec).
type Template = (String, BTreeMap<String, String>, BTreeMap<String, String>, PodSpec);

impl Objects {
    /// Every pod template.
    fn pods(&self) -> Vec<Template> {
        let ds = self.daemon_sets.iter().map(|(n, d)| {
            let s = d.spec.clone().unwrap();
            (n.clone(), s.template, s.selector)
        });
        let dep = self.deployments.iter().map(|(n, d)| {
            let s = d.spec.clone().unwrap();
            (n.clone(), s.template, s.selector)
        });
        ds.chain(dep)
            .map(|(n, t, sel)| {
                let labels = t.metadata.and_then(|m| m.labels).unwrap_or_default();
                (n, labels, sel.match_labels.unwrap_or_default(), t.spec.unwrap())
            })
            .collect()
    }

    fn agent_pod(&self) -> PodSpec {
        self.daemon_sets["ferry-agent"].spec.clone().unwrap().template.spec.unwrap()
    }

    fn dns_pod(&self) -> PodSpec {
        self.deployments["ferry-dns"].spec.clone().unwrap().template.spec.unwrap()
    }
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

fn containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers.iter().flatten().chain(&pod.containers)
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    containers(pod).find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

/// The value of `--flag=value` (or `--flag value`) in a container's args.
fn flag(c: &Container, name: &str) -> Option<String> {
    let args = c.args.clone().unwrap_or_default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
        if a == name {
            return Some(it.next().cloned().unwrap_or_default());
        }
    }
    None
}

/// The host path of the volume mounted at (or above) `path` in `c`, with
/// the path below the mount: `/host/etc/cni/net.d/x` -> `/etc/cni/net.d/x`.
fn host_path_of(pod: &PodSpec, c: &Container, path: &str) -> Option<String> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let vol = pod.volumes.iter().flatten().find(|v| v.name == m.name)?;
    let rest = Path::new(path).strip_prefix(&m.mount_path).unwrap();
    let host = Path::new(&vol.host_path.as_ref()?.path).join(rest);
    Some(host.to_string_lossy().trim_end_matches('/').to_string())
}

/// Service account, config maps (and the keys env reads), volumes and
/// mounts of a pod all resolve.
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
    for c in containers(pod) {
        assert_eq!(c.image.as_deref(), Some(image().as_str()), "{what}: {}: image", c.name);
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.iter().any(|v| v.name == m.name),
                "{what}: {}: mount of undeclared volume {}",
                c.name,
                m.name
            );
        }
        for e in c.env.iter().flatten() {
            let Some(r) = e.value_from.as_ref().and_then(|f| f.config_map_key_ref.as_ref()) else { continue };
            let cm = o.config_maps.get(&r.name);
            let has_key = cm.and_then(|cm| cm.data.as_ref()).is_some_and(|d| d.contains_key(&r.key));
            assert!(has_key, "{what}: {}: env {} reads {}/{}, which is not declared", c.name, e.name, r.name, r.key);
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
    for (name, labels, selector, pod) in o.pods() {
        check_pod(&o, &name, &labels, &selector, &pod);
    }
}

/// The grants, flattened, are exactly [`RBAC`]: a missing one breaks a
/// watch, an extra one is more than least privilege.
#[test]
fn rbac_is_exactly_what_the_components_read() {
    let o = objects();
    let mut granted = BTreeSet::new();
    for b in o.bindings.values() {
        let role = &o.cluster_roles[&b.role_ref.name];
        for s in b.subjects.iter().flatten() {
            assert_eq!(s.kind, "ServiceAccount", "{}", b.metadata.name.as_deref().unwrap_or("?"));
            for r in role.rules.iter().flatten() {
                assert!(r.resource_names.is_none() && r.non_resource_urls.is_none(), "{r:?}");
                for g in r.api_groups.iter().flatten() {
                    for res in r.resources.iter().flatten() {
                        for v in &r.verbs {
                            granted.insert((s.name.clone(), g.clone(), res.clone(), v.clone()));
                        }
                    }
                }
            }
        }
    }
    let want: BTreeSet<_> =
        RBAC.iter().map(|&(sa, g, r, v)| (sa.to_string(), g.to_string(), r.to_string(), v.to_string())).collect();
    let extra: Vec<_> = granted.difference(&want).collect();
    let missing: Vec<_> = want.difference(&granted).collect();
    assert!(extra.is_empty() && missing.is_empty(), "RBAC differs: extra {extra:?}, missing {missing:?}");
    // Each workload runs as the account the table is about.
    assert_eq!(o.agent_pod().service_account_name.as_deref(), Some("ferry-agent"));
    assert_eq!(o.dns_pod().service_account_name.as_deref(), Some("ferry-dns"));
}

#[test]
fn agent_daemonset_has_the_node_access_it_needs() {
    let o = objects();
    let pod = o.agent_pod();
    assert_eq!(pod.host_network, Some(true), "the agent works on the node's own links");
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert!(
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "must run on every node"
    );
    let agent = container(&pod, "agent");
    // The decision in 20-agent.yaml: privileged, because the bpffs mount
    // has to propagate to the host (Bidirectional needs privileged).
    assert_eq!(agent.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let bpffs = agent.volume_mounts.iter().flatten().find(|m| m.mount_path == "/sys/fs/bpf").expect("bpffs mounted");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));
    assert_eq!(host_path_of(&pod, agent, "/sys/fs/bpf").as_deref(), Some("/sys/fs/bpf"));
    // The pin dir is on it, at the same path as on the host (the conflist
    // the agent writes names it for the plugin).
    let pin_dir = flag(agent, "--pin-dir").unwrap_or_else(|| "/sys/fs/bpf/ferry".into());
    assert_eq!(host_path_of(&pod, agent, &pin_dir), Some(pin_dir.clone()));
    // The conflist lands in the host's /etc/cni/net.d, from the API.
    assert!(flag(agent, "--kubernetes").is_some(), "the agent follows the API");
    let conf = flag(agent, "--write-cni-conf").expect("the agent writes the conflist");
    assert_eq!(host_path_of(&pod, agent, &conf).as_deref(), Some("/etc/cni/net.d/10-ferry.conflist"));
    let socket_lb = flag(agent, "--socket-lb-cgroup").expect("socket LB cgroup");
    assert_eq!(host_path_of(&pod, agent, &socket_lb).as_deref(), Some("/sys/fs/cgroup"));
    // NODE_NAME from the downward API; the API server from the ConfigMap,
    // optional (unset means in-cluster).
    let env = |name: &str| agent.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value_from.clone());
    let node = env("NODE_NAME").and_then(|f| f.field_ref).expect("NODE_NAME from fieldRef");
    assert_eq!(node.field_path, "spec.nodeName");
    let api = env("FERRY_API_SERVER").and_then(|f| f.config_map_key_ref).expect("FERRY_API_SERVER from ferry-config");
    assert_eq!((api.name.as_str(), api.key.as_str(), api.optional), ("ferry-config", "api-server", Some(true)));
    // Probes reach the metrics listener: kubelet asks 127.0.0.1 (host
    // network) on the port --metrics-addr binds, which must cover loopback.
    let metrics: std::net::SocketAddr = flag(agent, "--metrics-addr").expect("--metrics-addr").parse().unwrap();
    assert!(metrics.ip().is_unspecified() || metrics.ip().is_loopback(), "{metrics}");
    for (what, probe) in [("liveness", &agent.liveness_probe), ("readiness", &agent.readiness_probe)] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what} probe"));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{what}");
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(metrics.port().into()));
    }
    assert_eq!(agent.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
    assert_eq!(agent.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
    // The image has no shell: the plugin installs itself into the host's
    // /opt/cni/bin, unprivileged.
    let install = pod.init_containers.iter().flatten().find(|c| c.name == "install-cni").expect("install-cni");
    assert_eq!(
        install.command.as_deref().unwrap_or_default(),
        ["/usr/bin/ferry", "install-cni", "--dir", "/host/opt/cni/bin"]
    );
    assert_eq!(host_path_of(&pod, install, "/host/opt/cni/bin").as_deref(), Some("/opt/cni/bin"));
    let sc = install.security_context.as_ref().expect("install-cni securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    // One init container: the agent mounts bpffs itself.
    assert_eq!(pod.init_containers.iter().flatten().count(), 1);
}

#[test]
fn ferry_dns_is_spread_unprivileged_and_budgeted() {
    let o = objects();
    let d = &o.deployments["ferry-dns"];
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = o.dns_pod();
    let c = container(&pod, "dns");
    assert!(flag(c, "--kubernetes").is_some(), "ferry-dns follows the API");
    // Non-root with no capability at all: port 53 comes from the safe
    // sysctl (added capabilities do not reach a non-root process).
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    let sysctl = psc.sysctls.iter().flatten().find(|s| s.name == "net.ipv4.ip_unprivileged_port_start");
    let listen: std::net::SocketAddr = flag(c, "--listen").expect("--listen").parse().unwrap();
    let start: u16 = sysctl.expect("ip_unprivileged_port_start").value.parse().unwrap();
    assert!(start <= listen.port(), "{start} > {}", listen.port());
    let sc = c.security_context.as_ref().expect("container securityContext");
    assert_eq!(sc.run_as_non_root.or(psc.run_as_non_root), Some(true));
    assert!(sc.run_as_user.or(psc.run_as_user).is_some_and(|u| u > 0));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.clone(), Some(vec!["ALL".to_string()]));
    assert!(caps.add.as_deref().unwrap_or_default().is_empty(), "{:?}", caps.add);
    // Replicas on different nodes when possible.
    let anti = pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()).expect("podAntiAffinity");
    let by_host = anti
        .preferred_during_scheduling_ignored_during_execution
        .iter()
        .flatten()
        .any(|t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname");
    assert!(by_host, "spread by kubernetes.io/hostname");
    // The PDB selects exactly these pods and keeps one up.
    let pdb = o.pdbs["ferry-dns"].spec.as_ref().unwrap();
    let labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in pdb.selector.as_ref().unwrap().match_labels.iter().flatten() {
        assert_eq!(labels.get(k), Some(v), "PDB selector {k}={v}");
    }
    assert_eq!(pdb.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
}

#[test]
fn kube_dns_service_is_what_pods_and_tools_expect() {
    let o = objects();
    let (svc, raw) = &o.services["kube-dns"];
    // Through the catalog's own conversion: the address the kubelet hands
    // pods as their nameserver, DNS on UDP and TCP.
    let conv = ferry_state::convert::service(&serde_json::from_value(raw.clone()).unwrap()).unwrap();
    assert_eq!(*conv.cluster_ips, ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]);
    let has = |proto, port| conv.ports.iter().any(|p| p.protocol == proto && p.port == port);
    assert!(has(ferry_state::Protocol::Udp, 53) && has(ferry_state::Protocol::Tcp, 53));
    // The names and labels CoreDNS's Service has, which tools look for.
    let labels = svc.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("k8s-app").map(String::as_str), Some("kube-dns"));
    assert_eq!(labels.get("kubernetes.io/cluster-service").map(String::as_str), Some("true"));
    let spec = svc.spec.as_ref().unwrap();
    let ports: Vec<_> =
        spec.ports.iter().flatten().map(|p| (p.name.clone().unwrap(), p.port, p.protocol.clone().unwrap())).collect();
    assert_eq!(
        ports,
        [
            ("dns".into(), 53, "UDP".into()),
            ("dns-tcp".into(), 53, "TCP".into()),
            ("metrics".into(), 9153, "TCP".into())
        ]
    );
    // It selects the ferry-dns pods (k8s-app: kube-dns, as tools select
    // them), and every target port is one the container declares.
    let selector = spec.selector.clone().unwrap();
    assert_eq!(selector.get("k8s-app").map(String::as_str), Some("kube-dns"));
    let dns = &o.deployments["ferry-dns"];
    let labels = dns.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "kube-dns selector {k}={v}");
    }
    let pod = o.dns_pod();
    let declared: Vec<_> =
        container(&pod, "dns").ports.iter().flatten().map(|p| (p.container_port, p.protocol.clone())).collect();
    for p in spec.ports.iter().flatten() {
        let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) = p.target_port else {
            panic!("numeric targetPort expected (NodeLocal DNSCache's upstream Service uses 53)")
        };
        assert!(declared.contains(&(t, p.protocol.clone())), "targetPort {t}/{:?} not declared", p.protocol);
    }
}

/// Where a Ferry binary of the same build profile as this test is:
/// target/<profile>/ (this test runs from target/<profile>/deps/).
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: build the binaries first (`make build`, or cargo build --workspace --bins with this \
         test's profile)",
        path.display()
    );
    path
}

/// Runs a command with a time limit (coreutils timeout, SIGKILL).
fn run_bounded(program: &Path, args: &[&str], limit: Duration) -> Output {
    Command::new("timeout")
        .arg("-s")
        .arg("KILL")
        .arg(limit.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Every `--flag` the manifests pass and every environment variable they
/// set exists in the binary's `--help` (clap prints `[env: NAME=]`). The
/// command's first word is the binary's path in the image, /usr/bin/<name>.
#[test]
fn command_line_flags_and_env_exist() {
    let o = objects();
    let mut checked = 0;
    for (_, _, _, pod) in o.pods() {
        for c in containers(&pod) {
            let cmd = c.command.clone().unwrap_or_default();
            let bin = cmd.first().unwrap_or_else(|| panic!("{}: no command (the image has no entrypoint)", c.name));
            let name = bin.strip_prefix("/usr/bin/").unwrap_or_else(|| panic!("{}: {bin} is not in /usr/bin", c.name));
            let out = run_bounded(&built_binary(name), &["--help"], Duration::from_secs(10));
            assert!(out.status.success(), "{name} --help: {}", String::from_utf8_lossy(&out.stderr));
            let help = String::from_utf8_lossy(&out.stdout);
            let words: Vec<&str> = cmd[1..].iter().chain(c.args.iter().flatten()).map(String::as_str).collect();
            for w in words {
                if w.starts_with("--") {
                    let f = w.split('=').next().unwrap();
                    assert!(
                        help.contains(&format!("{f} "))
                            || help.contains(&format!("{f}\n"))
                            || help.contains(&format!("{f}=")),
                        "{name} has no flag {f}"
                    );
                    checked += 1;
                } else if !w.starts_with('/') {
                    // A subcommand (`ferry install-cni`).
                    assert!(help.contains(w), "{name} has no subcommand {w}");
                }
            }
            for e in c.env.iter().flatten() {
                assert!(
                    help.contains(&format!("[env: {}=", e.name)),
                    "{name} reads no environment variable {}",
                    e.name
                );
                checked += 1;
            }
        }
    }
    eprintln!("{checked} flags and variables checked against the built binaries");
}

/// The venv scripts/bootstrap.sh installs kubernetes-validate and checkov
/// into; a missing tool is a failure that says how to get it.
fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("FERRY_VENV").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache"));
        cache.join("ferry/venv")
    });
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} missing: run scripts/bootstrap.sh (or make bootstrap), which installs kubernetes-validate and \
         checkov into {}",
        tool.display(),
        venv.display()
    );
    tool
}

/// Every document validates against the Kubernetes OpenAPI schemas, unknown
/// fields rejected: 1.33 (the oldest release these manifests support, as
/// k8s-openapi's v1_33 here) and the newest the tool ships.
#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let tool = venv_tool("kubernetes-validate");
    let files: Vec<String> = manifest_files().iter().map(|p| p.to_string_lossy().into_owned()).collect();
    for version in [Some("1.33.0"), None] {
        let mut args = vec!["--strict"];
        if let Some(v) = version {
            args.extend(["-k", v]);
        }
        args.extend(files.iter().map(String::as_str));
        let out = run_bounded(&tool, &args, Duration::from_secs(120));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubernetes-validate {}:\n{text}", version.unwrap_or("(newest)"));
        let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed, documents().len(), "every document validated:\n{text}");
    }
}

/// checkov's Kubernetes checks: nothing fails, and every skip is one of the
/// `checkov.io/skipN: CKV_...=reason` annotations, each with a comment
/// above it in the YAML and each still needed (it suppresses a finding).
#[test]
fn checkov_finds_nothing_unjustified() {
    let tool = venv_tool("checkov");
    // Canonical: checkov skips any path with "/." in it as hidden, `..` included.
    let dir = repo_root().join("manifests").canonicalize().unwrap();
    let args = ["-d", dir.to_str().unwrap(), "--framework", "kubernetes", "--skip-download", "-o", "json"];
    let out = run_bounded(&tool, &args, Duration::from_secs(300));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // An empty scan prints only a summary: every document must have been read.
    // (It counts each workload's pod template as one more resource.)
    let read = report["summary"]["resource_count"].as_u64().unwrap_or(0) as usize;
    assert!(read >= documents().len(), "checkov read {read} resources: {}", report["summary"]);
    let results = &report["results"];
    let failed: Vec<String> = results["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {} ({}): {}", c["check_id"], c["resource"], c["file_path"], c["check_name"]))
        .collect();
    assert!(failed.is_empty(), "checkov findings to fix or justify:\n{}", failed.join("\n"));
    assert_eq!(report["summary"]["parsing_errors"], 0, "{}", report["summary"]);
    assert!(report["summary"]["passed"].as_u64().unwrap_or(0) > 100, "checkov ran its checks: {}", report["summary"]);
    // (workload name, check id) of every skip checkov applied.
    let skipped: BTreeSet<(String, String)> = results["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let comment = c["check_result"]["suppress_comment"].as_str().unwrap_or_default();
            assert!(
                !comment.is_empty() && comment != "No comment provided",
                "skip without a reason: {} {}",
                c["check_id"],
                c["resource"]
            );
            let name = c["resource"].as_str().unwrap().split('.').nth(2).unwrap_or_default().to_string();
            (name, c["check_id"].as_str().unwrap().to_string())
        })
        .collect();
    // Every annotation in the YAML: justified by a comment just above it
    // (one or more `#` lines, possibly between other skips' lines), and used.
    let mut annotated = BTreeSet::new();
    for f in manifest_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.trim_start().starts_with("checkov.io/skip") {
                continue;
            }
            let commented = lines[..i]
                .iter()
                .rev()
                .take_while(|p| p.trim_start().starts_with('#') || p.trim_start().starts_with("checkov.io/skip"))
                .any(|p| p.trim_start().starts_with('#'));
            assert!(commented, "{}:{}: skip without a comment above it: {l}", f.display(), i + 1);
        }
    }
    for (file, doc) in documents() {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        for (k, v) in doc["metadata"]["annotations"].as_object().into_iter().flatten() {
            if k.starts_with("checkov.io/skip") {
                let v = v.as_str().unwrap_or_default();
                let (id, reason) = v.split_once('=').unwrap_or_else(|| panic!("{file}: {k}: no reason in {v:?}"));
                assert!(!reason.contains('='), "{file}: {k}: checkov splits on '=', so the reason may not hold one");
                annotated.insert((name.clone(), id.to_string()));
            }
        }
    }
    let unused: Vec<_> = annotated.difference(&skipped).collect();
    assert!(unused.is_empty(), "skips that suppress nothing (remove them): {unused:?}");
    eprintln!("checkov: {} passed, {} skipped with reasons", report["summary"]["passed"], skipped.len());
}
