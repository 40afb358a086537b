//! Load-balancer test pieces: a per-test bpffs pin dir, the real
//! `ferry-agent` binary running in a node namespace on a YAML directory, and
//! writers for the Service / EndpointSlice YAML it reads.
//!
//! ```text
//!  node netns ── ferry-agent --yaml-dir <scratch>/catalog --pin-dir /sys/fs/bpf/ferry-test-<pid>-<n>
//!                 attaches to pod host veths (fer<12 hex>) as they appear
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::node::{ferry_bin_dir, Node, NodeConfig, Proc};
use super::util;

/// The CNI plugin's host veths are `fer` + 12 hex digits; the bridge
/// (`ferry0`) must not match, and the agent's pattern is glob-only.
pub const POD_VETHS: &str =
    "fer0*,fer1*,fer2*,fer3*,fer4*,fer5*,fer6*,fer7*,fer8*,fer9*,fera*,ferb*,ferc*,ferd*,fere*,ferf*";

/// The per-test bpffs dir (`/sys/fs/bpf/ferry-test-<pid>-<n>`, removed
/// with its pins on drop, which also detaches the pinned tcx links).
pub use ferry_datapath::testing::PinDir;

/// A node whose netconf points the CNI plugin at a fresh per-test pin dir
/// (so a plugin that attaches on ADD uses this test's programs, never the
/// machine's default pin dir).
pub fn lb_node() -> (Node, PinDir) {
    let pin = PinDir::new();
    let node =
        Node::with_config(NodeConfig { extra: serde_json::json!({ "pinDir": pin.path() }), ..NodeConfig::default() });
    (node, pin)
}

/// Small map capacities so that concurrent tests do not pin hundreds of MB.
const SMALL_MAPS: &[&str] = &[
    "--maglev-size",
    "251",
    "--max-tables",
    "64",
    "--max-services",
    "256",
    "--max-backends",
    "1024",
    "--ct-size",
    "16384",
    "--affinity-size",
    "1024",
];

/// The real agent, in the node namespace, on a YAML directory of the node's
/// scratch space. SIGKILLed on drop; its log is printed if the test panics.
pub struct Agent {
    node: Node,
    pub pin: PinDir,
    pub yaml_dir: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: SocketAddr,
    log: PathBuf,
    proc: Option<Proc>,
    pub extra_args: Vec<String>,
    /// The source flags: `--yaml-dir <yaml_dir>` unless started on an API.
    pub source_args: Vec<String>,
}

impl Agent {
    /// Starts the agent on `pin` and waits for `/readyz` (first full sync
    /// done). Make the node with [`lb_node`] so the CNI plugin uses the same
    /// pin dir: pods added while the agent runs get the programs from the
    /// plugin's ADD. Pass `["--iface-pattern", POD_VETHS]` to `start_with`
    /// to have the agent attach to pods that existed before it.
    pub fn start(node: &Node, pin: PinDir) -> Self {
        Self::start_with(node, pin, &[])
    }

    pub fn start_with(node: &Node, pin: PinDir, extra: &[&str]) -> Self {
        let mut a = Self::new(node, pin, extra, None);
        a.spawn();
        a
    }

    /// The agent following a Kubernetes API server (`--api-server URL`),
    /// started without waiting: with the API down it is not ready, which
    /// the caller may be testing. [`wait_ready`](Self::wait_ready) waits.
    pub fn start_on_api(node: &Node, pin: PinDir, api_url: &str, extra: &[&str]) -> Self {
        let mut a = Self::new(node, pin, extra, Some(vec!["--api-server".into(), api_url.into()]));
        a.spawn_nowait();
        a
    }

    fn new(node: &Node, pin: PinDir, extra: &[&str], source_args: Option<Vec<String>>) -> Self {
        let yaml_dir = node.scratch().join("catalog");
        std::fs::create_dir_all(&yaml_dir).expect("catalog dir");
        let source_args = source_args.unwrap_or_else(|| vec!["--yaml-dir".into(), yaml_dir.display().to_string()]);
        Agent {
            node: node.clone(),
            pin,
            state_dir: node.scratch().join("agent-state"),
            yaml_dir,
            // Inside the node netns, so its loopback is the test's own.
            metrics: "127.0.0.1:9962".parse().expect("addr"),
            log: node.scratch().join("agent.log"),
            proc: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            source_args,
        }
    }

    fn spawn(&mut self) {
        self.spawn_nowait();
        self.wait_ready(Duration::from_secs(15));
    }

    /// Waits for `/readyz`; panics with the log if the agent exits or the
    /// time runs out.
    pub fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        while !self.ready() {
            if let Some(Proc(Some(c))) = self.proc.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("ferry-agent exited ({status}):\n{}", self.log_text());
                }
            }
            assert!(started.elapsed() < limit, "agent not ready:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn_nowait(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut cmd = Command::new(ferry_bin_dir().join("ferry-agent"));
        cmd.args(&self.source_args)
            .arg("--pin-dir")
            .arg(self.pin.path())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--metrics-addr")
            .arg(self.metrics.to_string())
            .args(SMALL_MAPS)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,ferry_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.proc = Some(self.node.spawn(&mut cmd));
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// `kill -9`: nothing is cleaned up (maps and links stay pinned).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts a new agent on the same pin dir and catalog.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the agent's HTTP listener: (status line, body).
    pub fn http_get(&self, path: &str) -> Option<(String, String)> {
        self.node.http_get(self.metrics, path)
    }

    pub fn ready(&self) -> bool {
        self.http_get("/readyz").is_some_and(|(s, _)| s.contains(" 200 "))
    }

    /// `ferryctl service list`'s row for a frontend (`10.96.0.10:80`,
    /// `[fd00::10]:80`): (backends taking new flows, all backends), or
    /// `None` when it is not programmed.
    pub fn frontend_row(&self, frontend: &str) -> Option<(u32, usize)> {
        let rows: serde_json::Value = serde_json::from_str(&self.ferryctl(&["-o", "json", "service", "list"])).ok()?;
        let r = rows.as_array()?.iter().find(|r| r["frontend"] == frontend)?;
        Some((r["active"].as_u64()? as u32, r["backends"].as_u64()? as usize))
    }

    /// Runs `ferryctl` against this agent's maps.
    pub fn ferryctl(&self, args: &[&str]) -> String {
        let mut v: Vec<String> = vec![
            ferry_bin_dir().join("ferryctl").display().to_string(),
            "--pin-dir".into(),
            self.pin.path().display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        util::sh(&refs)
    }

    /// Writes one catalog file atomically (temp file, then rename), as a
    /// ConfigMap update or `kubectl get -o yaml > f` followed by mv would.
    pub fn write(&self, file: &str, yaml: &str) {
        write_atomic(&self.yaml_dir, file, yaml);
    }

    pub fn remove(&self, file: &str) {
        let _ = std::fs::remove_file(self.yaml_dir.join(file));
    }

    /// Waits until the host veth of every pod has the programs attached
    /// (the agent's watcher pins a link per direction).
    pub fn wait_attached(&self, host_veths: &[&str]) {
        let names: Vec<String> = host_veths.iter().map(|s| s.to_string()).collect();
        let idx: Vec<u32> = self.node.run(move || names.iter().map(|n| nix_ifindex(n)).collect());
        let links = self.pin.path().join("links");
        crate::assert_eventually!(
            idx.iter().all(|i| links.join(format!("{i}-in")).exists() && links.join(format!("{i}-out")).exists()),
            Duration::from_secs(5),
            "programs attached to {host_veths:?}:\n{}",
            self.log_text()
        );
    }
}

fn nix_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- ferry-agent log ---\n{}", self.log_text());
        }
    }
}

pub fn write_atomic(dir: &Path, file: &str, text: &str) {
    // Hidden temp name: the directory source ignores dotfiles.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write catalog file");
    std::fs::rename(&tmp, dir.join(file)).expect("rename catalog file");
}

/// A Service port: (name, protocol, port, targetPort as YAML scalar).
pub type SvcPort<'a> = (&'a str, &'a str, u16, &'a str);

/// A Service with the given clusterIPs (dual-stack when two), plus raw
/// extra `spec` lines (e.g. `  sessionAffinity: ClientIP`).
pub fn service(name: &str, cluster_ips: &[&str], ports: &[SvcPort<'_>], extra_spec: &str) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {}\n  clusterIPs: [{}]\n",
        cluster_ips[0],
        cluster_ips.join(", ")
    );
    if cluster_ips.len() > 1 {
        s.push_str("  ipFamilyPolicy: RequireDualStack\n");
    }
    s.push_str("  ports:\n");
    for (pname, proto, port, target) in ports {
        let _ = writeln!(s, "  - name: {pname}\n    protocol: {proto}\n    port: {port}\n    targetPort: {target}");
    }
    s.push_str(extra_spec);
    s
}

/// One endpoint: address and conditions.
#[derive(Debug, Clone)]
pub struct Ep {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

impl Ep {
    pub fn ready(addr: impl Into<IpAddr>) -> Self {
        Ep { addr: addr.into(), ready: true, serving: true, terminating: false, node: None }
    }
    /// Being deleted but still serving (graceful termination).
    pub fn terminating(addr: impl Into<IpAddr>) -> Self {
        Ep { addr: addr.into(), ready: false, serving: true, terminating: true, node: None }
    }
}

/// An EndpointSlice of `svc` with one port set: (name, protocol, port).
pub fn slice(name: &str, svc: &str, ports: &[(&str, &str, u16)], eps: &[Ep]) -> String {
    let family = if eps.first().is_some_and(|e| e.addr.is_ipv6()) { "IPv6" } else { "IPv4" };
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: {family}\nports:\n"
    );
    for (pname, proto, port) in ports {
        let _ = writeln!(s, "- name: {pname}\n  protocol: {proto}\n  port: {port}");
    }
    s.push_str("endpoints:\n");
    if eps.is_empty() {
        // `endpoints: []`: a slice that exists but lists nobody.
        s.truncate(s.len() - 1);
        s.push_str(" []\n");
    }
    for e in eps {
        let _ = writeln!(
            s,
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}",
            e.addr, e.ready, e.serving, e.terminating
        );
        if let Some(n) = &e.node {
            let _ = writeln!(s, "  nodeName: {n}");
        }
    }
    s
}
