//! A node namespace and pods attached to it through the real `ferry` binary.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::util::{self, NamedNetns};

/// What a node's network config looks like. The defaults are a dual-stack
/// pod network on bridge `ferry0`, IPAM state in a scratch dir of the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub ipv4_subnet: Option<String>,
    pub ipv6_subnet: Option<String>,
    pub bridge: String,
    pub cni_version: String,
    /// Merged into the generated netconf last (e.g. `{"pinDir": ...}`); a
    /// `null` value removes a key.
    pub extra: Value,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            ipv4_subnet: Some("10.244.0.0/24".into()),
            ipv6_subnet: Some("fd00:10:244::/64".into()),
            bridge: "ferry0".into(),
            cni_version: "1.1.0".into(),
            extra: json!({}),
        }
    }
}

/// The outcome of one plugin invocation.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// stdout parsed as JSON (Null when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
    /// The CNI error code of a failed invocation.
    pub fn error_code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }
}

/// Where the plugin and the reference plugins are.
pub fn ferry_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/release/deps/e2e-<hash> -> target/release
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The CNI_PATH tests run with: ferry's dir, then Debian's reference plugins.
pub fn cni_path() -> String {
    format!("{}:/usr/lib/cni:/opt/cni/bin", ferry_bin_dir().display())
}

/// Invokes a CNI plugin binary exactly as a runtime does: CNI_* environment,
/// config on stdin, inside the node namespace.
#[derive(Debug, Clone)]
pub struct CniCall<'a> {
    pub plugin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub stdin: Vec<u8>,
    /// Environment variables to leave out (for the bad-input tests).
    pub drop_env: Vec<&'static str>,
}

/// The shared state of a node; pods hold an Arc so the node outlives them.
#[derive(Debug)]
pub struct NodeInner {
    pub netns: NamedNetns,
    pub scratch: PathBuf,
    pub netconf: Value,
    pods: AtomicU32,
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        self.netns.delete();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A "node": its own network namespace (no link to the root namespace),
/// ip_forward on, ICMP redirects off, and a netconf pods are added with. The
/// bridge is created by ferry on the first ADD.
#[derive(Debug, Clone)]
pub struct Node(pub Arc<NodeInner>);

impl Node {
    pub fn new() -> Self {
        Self::with_config(NodeConfig::default())
    }

    pub fn with_config(cfg: NodeConfig) -> Self {
        util::sweep_stale();
        let name = util::unique("n");
        let scratch = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let netns = NamedNetns::create(&name);
        netns.run(|| {
            util::sysctl("net.ipv4.ip_forward", "1");
            util::sysctl("net.ipv6.conf.all.forwarding", "1");
            // DNATed packets are routed by the node while replies are
            // bridged; redirects would only confuse pods (DESIGN.md).
            util::sysctl("net.ipv4.conf.all.send_redirects", "0");
            util::sysctl("net.ipv4.conf.default.send_redirects", "0");
        });
        let mut ranges = vec![];
        if let Some(s) = &cfg.ipv4_subnet {
            ranges.push(json!([{ "subnet": s }]));
        }
        if let Some(s) = &cfg.ipv6_subnet {
            ranges.push(json!([{ "subnet": s }]));
        }
        let mut netconf = json!({
            "cniVersion": cfg.cni_version,
            "name": "ferry-test",
            "type": "ferry",
            "bridge": cfg.bridge,
            "mtu": 1500,
            // Never the machine's default pin dir: a path with nothing pinned
            // means "no data path"; LB tests override it with their own.
            "pinDir": scratch.join("no-datapath"),
            "ipam": {
                "type": "ferry",
                "ranges": ranges,
                "dataDir": scratch.join("ipam"),
            },
        });
        merge(&mut netconf, &cfg.extra);
        Node(Arc::new(NodeInner { netns, scratch, netconf, pods: AtomicU32::new(0) }))
    }

    pub fn name(&self) -> &str {
        self.0.netns.name()
    }
    pub fn netns_path(&self) -> &Path {
        self.0.netns.path()
    }
    /// A scratch directory deleted with the node.
    pub fn scratch(&self) -> &Path {
        &self.0.scratch
    }
    pub fn netconf(&self) -> &Value {
        &self.0.netconf
    }
    /// The IPAM data dir of the default netconf.
    pub fn ipam_dir(&self) -> PathBuf {
        self.0.scratch.join("ipam").join("ferry-test")
    }

    /// Runs `f` on a fresh thread inside the node namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.0.netns.run(f)
    }

    /// One HTTP GET from inside the node namespace (a metrics or health
    /// endpoint): the status line and the body, or `None` if nothing answers.
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Option<(String, String)> {
        use std::io::{Read, Write};
        let path = path.to_string();
        self.run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: ferry\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            let (head, body) = out.split_once("\r\n\r\n")?;
            Some((head.lines().next()?.to_string(), body.to_string()))
        })
    }

    /// `ip -n <node> <args>`, output as a string (panics on failure).
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", self.name()];
        v.extend_from_slice(args);
        util::sh(&v)
    }

    /// Starts a long-running process inside the node namespace; killed on drop.
    pub fn spawn(&self, cmd: &mut Command) -> Proc {
        self.0.netns.command(cmd);
        Proc::spawn(cmd)
    }

    /// Runs one plugin invocation in the node namespace (10 s limit).
    pub fn cni(&self, call: &CniCall<'_>) -> CniOutput {
        let bin = ferry_bin_dir().join(call.plugin);
        let bin = if bin.exists() { bin } else { PathBuf::from("/usr/lib/cni").join(call.plugin) };
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_NETNS", call.netns)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_ARGS", call.args)
            .env("CNI_PATH", cni_path());
        for k in &call.drop_env {
            cmd.env_remove(k);
        }
        self.0.netns.command(&mut cmd);
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        {
            let mut stdin = child.stdin.take().expect("stdin");
            // A plugin may exit before reading everything (bad input): ignore EPIPE.
            let _ = stdin.write_all(&call.stdin);
        }
        let out = wait_with_deadline(child, Duration::from_secs(10));
        CniOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// A pod namespace (not yet attached) with a fresh container id.
    pub fn new_sandbox(&self, name: &str) -> Sandbox {
        let n = self.0.pods.fetch_add(1, Ordering::Relaxed);
        let ns = NamedNetns::create(&format!("{}p{n}", self.name()));
        Sandbox {
            container_id: format!("{}-{n}-{name}", self.name()),
            name: name.to_string(),
            netns: ns,
            ifname: "eth0".into(),
        }
    }

    /// ADD with this node's netconf; panics with the plugin's output on failure.
    pub fn add_pod(&self, name: &str) -> Pod {
        let netconf = self.0.netconf.clone();
        self.add_pod_with(name, &netconf, "").unwrap_or_else(|o| panic!("ADD {name} failed: {o:?}"))
    }

    /// ADD with an explicit netconf and CNI_ARGS; Err has the plugin's output.
    pub fn add_pod_with(&self, name: &str, netconf: &Value, args: &str) -> Result<Pod, CniOutput> {
        let sb = self.new_sandbox(name);
        self.attach(sb, netconf, args)
    }

    /// ADD for an existing sandbox.
    pub fn attach(&self, sb: Sandbox, netconf: &Value, args: &str) -> Result<Pod, CniOutput> {
        let out = self.cni(&sb.call("ADD", netconf, args));
        if !out.success() {
            return Err(out);
        }
        let result = out.json();
        Ok(Pod::new(self.clone(), sb, netconf.clone(), args.to_string(), result))
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// A pod namespace plus the identity a runtime gives it.
#[derive(Debug)]
pub struct Sandbox {
    pub container_id: String,
    pub name: String,
    pub netns: NamedNetns,
    pub ifname: String,
}

impl Sandbox {
    /// An invocation for this sandbox with `netconf` on stdin.
    pub fn call<'a>(&'a self, command: &'a str, netconf: &'a Value, args: &'a str) -> CniCall<'a> {
        CniCall {
            plugin: netconf.get("type").and_then(Value::as_str).unwrap_or("ferry"),
            command,
            container_id: &self.container_id,
            netns: self.netns.path().to_str().expect("utf-8 path"),
            ifname: &self.ifname,
            args,
            stdin: serde_json::to_vec(netconf).expect("json"),
            drop_env: vec![],
        }
    }
}

/// A pod attached through the plugin. Drop runs DEL (with prevResult, as a
/// runtime does) and deletes the namespace.
#[derive(Debug)]
pub struct Pod {
    pub node: Node,
    pub sandbox: Sandbox,
    pub netconf: Value,
    pub args: String,
    /// The ADD result as the plugin printed it.
    pub result: Value,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Host-side veth name (the interface without "sandbox" in the result).
    pub host_veth: Option<String>,
    deleted: bool,
}

impl Pod {
    fn new(node: Node, sandbox: Sandbox, netconf: Value, args: String, result: Value) -> Self {
        let mut ipv4 = None;
        let mut ipv6 = None;
        let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
        // The pod's addresses are those on its sandbox interface (a chained
        // result may carry other plugins' addresses too).
        let in_sandbox = |ip: &Value| {
            ip["interface"]
                .as_u64()
                .and_then(|i| ifaces.get(i as usize))
                .is_none_or(|i| i["name"] == sandbox.ifname.as_str() && i.get("sandbox").is_some())
        };
        for ip in result["ips"].as_array().into_iter().flatten().filter(|ip| in_sandbox(ip)) {
            let addr = ip["address"].as_str().unwrap_or("");
            match addr.split('/').next().unwrap_or("").parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if ipv4.is_none() => ipv4 = Some(a),
                Ok(IpAddr::V6(a)) if ipv6.is_none() => ipv6 = Some(a),
                _ => {}
            }
        }
        // The host end is the veth entry without a sandbox; the bridge comes
        // first, so take the last sandbox-less entry.
        let host_veth =
            ifaces.iter().rfind(|i| i.get("sandbox").is_none()).and_then(|i| i["name"].as_str()).map(str::to_string);
        Pod { node, sandbox, netconf, args, result, ipv4, ipv6, host_veth, deleted: false }
    }

    pub fn name(&self) -> &str {
        &self.sandbox.name
    }
    pub fn netns_path(&self) -> &Path {
        self.sandbox.netns.path()
    }
    pub fn netns_name(&self) -> &str {
        self.sandbox.netns.name()
    }
    pub fn container_id(&self) -> &str {
        &self.sandbox.container_id
    }
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4.unwrap_or_else(|| panic!("pod {} has no IPv4: {}", self.name(), self.result))
    }
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6.unwrap_or_else(|| panic!("pod {} has no IPv6: {}", self.name(), self.result))
    }

    /// Runs `f` on a fresh thread inside the pod namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.sandbox.netns.run(f)
    }

    /// `ip -n <pod> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", self.netns_name()];
        v.extend_from_slice(args);
        util::sh(&v)
    }

    /// Starts a long-running process inside the pod; killed on drop.
    pub fn spawn(&self, cmd: &mut Command) -> Proc {
        self.sandbox.netns.command(cmd);
        Proc::spawn(cmd)
    }

    /// Invokes the plugin for this pod (CHECK, DEL, ...) with its netconf
    /// plus `prevResult` = the ADD result.
    pub fn cni(&self, command: &str) -> CniOutput {
        let mut conf = self.netconf.clone();
        conf["prevResult"] = self.result.clone();
        self.node.cni(&self.sandbox.call(command, &conf, &self.args))
    }

    /// DEL now; panics if the plugin fails. Drop will not DEL again.
    pub fn delete(&mut self) {
        let out = self.cni("DEL");
        assert!(out.success(), "DEL {} failed: {out:?}", self.name());
        self.deleted = true;
    }

    /// Marks the pod as already deleted (a test did DEL itself).
    pub fn forget(&mut self) {
        self.deleted = true;
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.deleted {
            let out = self.cni("DEL");
            if !out.success() {
                // Never panic in drop (it would abort a test that is already
                // unwinding); the namespace removal below still cleans the pod.
                eprintln!("harness: DEL {} failed: {out:?}", self.name());
            }
        }
        self.sandbox.netns.delete();
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Option<Child>);

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        Proc(Some(child))
    }
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }
    /// Kills it now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_with_deadline(mut child: Child, limit: Duration) -> std::process::Output {
    // Read pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
        }
    };
    std::process::Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() }
}

/// Deep-merges `extra` into `base`; `null` removes a key.
pub fn merge(base: &mut Value, extra: &Value) {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(k);
            } else if v.is_object() && b.get(k).is_some_and(Value::is_object) {
                merge(b.get_mut(k).expect("checked"), v);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}
