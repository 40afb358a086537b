//! `make bench-k8s`: ferry-agent and ferry-dns following a Kubernetes API
//! server (ferry-fake-api, in this process) at N = 10,000 and 100,000
//! Services x 10 endpoints, beside the same catalog from a YAML directory
//! in the same run. For each N, source and binary: start to ready, peak
//! RSS, map memory (agent), and change latency: an endpoint change to the
//! maps (agent), a Service create to its first DNS answer (ferry-dns), p50
//! and p99 over 200 changes. Writes bench/results/k8s.json.
//!
//! Everything runs in a network namespace this program creates (`ferrybk-<pid>`):
//! the fake API on its loopback, both binaries inside it. Nothing is
//! attached to any interface; the agent's maps are pinned under a bpffs dir
//! of its own, removed at the end.
//!
//! ```text
//! ferry-bench-k8s [--services 10000,100000] [--changes 200] [--out bench/results/k8s.json]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_fake_api::{FakeApi, Options};
use serde_json::{json, Value};

const ENDPOINTS: usize = 10;
const AGENT_HTTP: &str = "127.0.0.1:19962";
const DNS_HTTP: &str = "127.0.0.1:19153";
const DNS_ADDR: &str = "127.0.0.1:10053";

fn main() {
    let mut sizes = vec![10_000usize, 100_000];
    let mut changes = 200usize;
    let mut out = PathBuf::from("bench/results/k8s.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => {
                sizes = args.next().expect("--services N,M").split(',').map(|s| s.parse().expect("a number")).collect()
            }
            "--changes" => changes = args.next().expect("--changes N").parse().expect("a number"),
            "--out" => out = args.next().expect("--out PATH").into(),
            other => panic!("unknown argument {other}"),
        }
    }
    let bin = bin_dir();
    let ns = Netns::create();
    let mut results = Vec::new();
    for &n in &sizes {
        eprintln!("== N = {n} Services x {ENDPOINTS} endpoints");
        let world = World::new(&ns, n);
        for source in [Source::Api, Source::Yaml] {
            let agent = measure_agent(&ns, &bin, &world, source, n, changes);
            eprintln!("   agent {source:?}: {agent}");
            let dns = measure_dns(&ns, &bin, &world, source, n, changes);
            eprintln!("   dns   {source:?}: {dns}");
            results.push(
                json!({"services": n, "endpoints": n * ENDPOINTS, "source": source.name(), "agent": agent, "dns": dns}),
            );
        }
    }
    print_table(&results);
    let doc = json!({
        "bench": "k8s",
        "endpoints_per_service": ENDPOINTS,
        "changes": changes,
        "goals_at_100000": {"agent_ready_s": 10, "agent_change_p99_ms": 50, "dns_change_p99_ms": 100,
                            "agent_rss_mb": 600, "dns_rss_mb": 500, "map_memory_mb": 1024},
        "results": results,
    });
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap() + "\n").expect("write results");
    eprintln!("wrote {}", out.display());
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Api,
    Yaml,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Api => "kubernetes-api",
            Source::Yaml => "yaml-dir",
        }
    }
}

fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FERRY_BIN") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("exe");
    exe.parent().expect("dir").to_path_buf()
}

/// The benchmark's network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("ferrybk-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
    /// `f` on a thread inside the namespace (threads it spawns stay there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("run");
    assert!(st.success(), "{cmd:?}: {st}");
}

fn service(i: usize) -> Value {
    let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

/// Service `i`'s slice, as the EndpointSlice controller makes it (one
/// slice: 10 endpoints is under its 100 per slice); a `salt` other than 0
/// moves the last endpoint's address.
fn slice(i: usize, salt: u32) -> Value {
    let base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + (i * 16) as u32;
    let eps: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            let mut a = base + e as u32 + 1;
            if e == ENDPOINTS - 1 && salt != 0 {
                a += 1 + salt % 3;
            }
            json!({"addresses": [std::net::Ipv4Addr::from(a).to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": format!("node-{}", e % 3)})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": format!("ns-{}", i % 100),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    })
}

/// The catalog twice: in the fake API, and as a YAML directory (one file
/// per Service: the Service and its slice).
struct World {
    api: FakeApi,
    dir: PathBuf,
}

impl World {
    fn new(ns: &Netns, n: usize) -> World {
        let t = Instant::now();
        let api = ns.run(|| FakeApi::start_with(Options::default()).expect("fake API"));
        api.apply_many((0..n).flat_map(|i| [service(i), slice(i, 0)]));
        let dir = std::env::temp_dir().join(format!("ferry-bench-k8s-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            write_yaml(&dir, i, &[service(i), slice(i, 0)]);
        }
        eprintln!("   catalog ready in the API and in {} ({:.1} s)", dir.display(), t.elapsed().as_secs_f64());
        World { api, dir }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_yaml(dir: &Path, i: usize, objs: &[Value]) {
    let text: String = objs.iter().map(|o| serde_yaml::to_string(o).unwrap() + "---\n").collect();
    let tmp = dir.join(format!(".svc-{i}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("svc-{i}.yaml"))).unwrap();
}

/// A child process killed on drop.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Peak resident set (VmHWM), MB.
    fn peak_rss_mb(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// Memory the kernel charges for the BPF maps the process holds (memlock
/// in each map fd's fdinfo), MB.
fn map_memory_mb(pid: u32) -> f64 {
    let mut total = 0u64;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if !text.contains("map_type:") {
            continue;
        }
        total += text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    }
    total as f64 / (1024.0 * 1024.0)
}

fn http_get(ns: &Netns, addr: &'static str, path: &'static str) -> Option<(u16, String)> {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    })
}

fn wait_ready(ns: &Netns, p: &mut Proc, addr: &'static str, limit: Duration) -> f64 {
    let t = Instant::now();
    loop {
        if http_get(ns, addr, "/readyz").is_some_and(|(c, _)| c == 200) {
            return t.elapsed().as_secs_f64();
        }
        assert!(p.alive(), "{} exited before ready", p.1);
        assert!(t.elapsed() < limit, "{} not ready in {limit:?}", p.1);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn syncs(ns: &Netns) -> u64 {
    http_get(ns, AGENT_HTTP, "/status")
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| v["syncs"].as_u64())
        .unwrap_or(0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn round(x: f64, d: i32) -> f64 {
    let m = 10f64.powi(d);
    (x * m).round() / m
}

fn measure_agent(ns: &Netns, bin: &Path, w: &World, source: Source, n: usize, changes: usize) -> Value {
    let pin = PathBuf::from(format!("/sys/fs/bpf/ferry-bench-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin);
    // Sized for the scale (README, "Data-path limits at scale"): a frontend
    // per Service, ten backends each, one Maglev table per frontend; above
    // 50,000 tables of 509 slots (8 B each), so the maps stay under 1 GB.
    let headroom = |x: usize| (x + x / 4).div_ceil(1024) * 1024;
    let tables = headroom(n).max(16_384) as u32;
    let backends = headroom(n * ENDPOINTS).max(262_144) as u32;
    let mut cmd = ns.command(&bin.join("ferry-agent"));
    match source {
        Source::Api => cmd.args(["--api-server", &w.api.url()]),
        Source::Yaml => cmd.arg("--yaml-dir").arg(&w.dir),
    };
    cmd.arg("--pin-dir")
        .arg(&pin)
        .args(["--state-dir", &format!("/tmp/ferry-bench-k8s-state-{}", std::process::id())])
        .args(["--metrics-addr", AGENT_HTTP])
        .args(["--max-services", &tables.to_string(), "--max-tables", &tables.to_string()])
        .args(["--maglev-size", if n > 50_000 { "509" } else { "1021" }])
        .args(["--max-backends", &backends.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut p = Proc(cmd.spawn().expect("ferry-agent"), "ferry-agent");
    let ready_s = wait_ready(ns, &mut p, AGENT_HTTP, Duration::from_secs(300));
    std::thread::sleep(Duration::from_millis(500));
    let mut lat = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = (k * 7919) % n;
        let before = syncs(ns);
        let t = Instant::now();
        match source {
            Source::Api => {
                w.api.apply(slice(i, 1 + k as u32));
            }
            Source::Yaml => write_yaml(&w.dir, i, &[service(i), slice(i, 1 + k as u32)]),
        }
        while syncs(ns) <= before {
            assert!(t.elapsed() < Duration::from_secs(30), "endpoint change {k} never synced");
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let maps = map_memory_mb(p.pid());
    let rss = p.peak_rss_mb();
    drop(p);
    let _ = std::fs::remove_dir_all(&pin);
    json!({
        "ready_s": round(ready_s, 2),
        "peak_rss_mb": round(rss, 1),
        "map_memory_mb": round(maps, 1),
        "endpoint_change_ms": {"p50": round(percentile(&mut lat.clone(), 0.5), 2), "p99": round(percentile(&mut lat, 0.99), 2)},
    })
}

fn dns_answers(ns: &Netns, name: String) -> bool {
    ns.run(move || {
        let mut m = hickory_proto::op::Message::new(
            0x4b4b,
            hickory_proto::op::MessageType::Query,
            hickory_proto::op::OpCode::Query,
        );
        m.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii(&name).expect("name"),
            hickory_proto::rr::RecordType::A,
        ));
        let Ok(s) = UdpSocket::bind("127.0.0.1:0") else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let server: SocketAddr = DNS_ADDR.parse().unwrap();
        if s.send_to(&m.to_vec().unwrap(), server).is_err() {
            return false;
        }
        let mut buf = [0u8; 1500];
        let Ok(n) = s.recv(&mut buf) else { return false };
        hickory_proto::op::Message::from_vec(&buf[..n]).is_ok_and(|r| !r.answers.is_empty())
    })
}

fn measure_dns(ns: &Netns, bin: &Path, w: &World, source: Source, n: usize, changes: usize) -> Value {
    let mut cmd = ns.command(&bin.join("ferry-dns"));
    match source {
        Source::Api => cmd.args(["--api-server", &w.api.url()]),
        Source::Yaml => cmd.arg("--yaml-dir").arg(&w.dir),
    };
    cmd.args(["--listen", DNS_ADDR, "--metrics-addr", DNS_HTTP, "--upstream", "127.0.0.1:9"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut p = Proc(cmd.spawn().expect("ferry-dns"), "ferry-dns");
    let ready_s = wait_ready(ns, &mut p, DNS_HTTP, Duration::from_secs(300));
    let mut lat = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = n + k + 1_000_000 * (source == Source::Yaml) as usize;
        let name = format!("svc-{i}.ns-{}.svc.cluster.local.", i % 100);
        let t = Instant::now();
        match source {
            Source::Api => {
                w.api.apply(service(i));
            }
            Source::Yaml => write_yaml(&w.dir, i, &[service(i)]),
        }
        while !dns_answers(ns, name.clone()) {
            assert!(t.elapsed() < Duration::from_secs(30), "Service create {k} never answered");
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let rss = p.peak_rss_mb();
    drop(p);
    json!({
        "ready_s": round(ready_s, 2),
        "peak_rss_mb": round(rss, 1),
        "service_create_to_answer_ms": {"p50": round(percentile(&mut lat.clone(), 0.5), 2), "p99": round(percentile(&mut lat, 0.99), 2)},
    })
}

fn print_table(results: &[Value]) {
    println!("\nbench-k8s: Kubernetes API source vs the same catalog from a YAML directory (ratio = api / yaml)");
    println!("{:>8} {:<6} {:<28} {:>12} {:>12} {:>7}", "N", "bin", "figure", "api", "yaml", "ratio");
    let rows: [(&str, &str, &[&str]); 7] = [
        ("agent", "ready s", &["ready_s"]),
        ("agent", "peak RSS MB", &["peak_rss_mb"]),
        ("agent", "map memory MB", &["map_memory_mb"]),
        ("agent", "endpoint->maps p50 ms", &["endpoint_change_ms", "p50"]),
        ("agent", "endpoint->maps p99 ms", &["endpoint_change_ms", "p99"]),
        ("dns", "ready s", &["ready_s"]),
        ("dns", "peak RSS MB", &["peak_rss_mb"]),
    ];
    let extra: [(&str, &str, &[&str]); 2] = [
        ("dns", "create->answer p50 ms", &["service_create_to_answer_ms", "p50"]),
        ("dns", "create->answer p99 ms", &["service_create_to_answer_ms", "p99"]),
    ];
    let mut ns: Vec<u64> = results.iter().filter_map(|r| r["services"].as_u64()).collect();
    ns.dedup();
    for n in ns {
        let pick = |src: &str| results.iter().find(|r| r["services"] == n && r["source"] == src);
        let (Some(api), Some(yaml)) = (pick("kubernetes-api"), pick("yaml-dir")) else { continue };
        for (bin, label, path) in rows.iter().chain(extra.iter()) {
            let get = |r: &Value| path.iter().fold(&r[*bin], |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
            let (a, y) = (get(api), get(yaml));
            println!("{n:>8} {bin:<6} {label:<28} {a:>12.2} {y:>12.2} {:>7.2}", a / y);
        }
    }
}
