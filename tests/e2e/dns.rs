//! ferry-dns end to end: the real binary from target/release on a YAML
//! directory, on 127.0.0.1 and a free port, queried with `dig` (a standard
//! client, UDP and TCP) and with raw sockets for timing and bad input.
//! Forwarding goes to a knot instance the test starts on loopback with its
//! own config and zone; every process is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::assert_eventually;
use ferry_tests::harness::ferry_bin_dir;
use ferry_tests::harness::util::{run_timeout, unique};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    /// Write a file atomically (write + rename), as `kubectl`-style tools
    /// and config management do, so the watcher never sees half a file.
    fn put(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct FerryDns {
    _proc: Daemon,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl FerryDns {
    fn start(args: &[&str]) -> FerryDns {
        let bin = ferry_bin_dir().join("ferry-dns");
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let proc = Daemon(child);
        // "ferry-dns listening on <addr> metrics on <addr>"
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("ferry-dns printed its address");
        let w: Vec<&str> = line.split_whitespace().collect();
        assert!(w.len() >= 6, "unexpected banner {line:?}");
        FerryDns { _proc: proc, addr: w[3].parse().unwrap(), metrics: w[6].parse().unwrap() }
    }

    fn http(&mut self, path: &str) -> String {
        if let Ok(Some(status)) = self._proc.0.try_wait() {
            panic!("ferry-dns exited: {status}");
        }
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn metric(&mut self, prefix: &str) -> f64 {
        self.http("/metrics")
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = run_timeout(
        Command::new("dig")
            .arg(format!("@{}", server.ip()))
            .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
            .args(args),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dig_short(server: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    let mut v: Vec<String> = dig(server, &a).lines().map(str::to_string).collect();
    v.sort();
    v
}

fn query(name: &str, qt: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qt));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// One UDP exchange with a raw socket; `None` when no answer comes within
/// `wait` (a dropped packet).
fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn udp(server: SocketAddr, name: &str, qt: RecordType) -> Message {
    let b = udp_raw(server, &query(name, qt, true), Duration::from_secs(3)).expect("an answer");
    Message::from_vec(&b).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, namespace: prod, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.0.5]
  hostname: db-0
- addresses: [10.244.0.6]
  hostname: db-1
- addresses: [10.244.0.7]
  hostname: db-2
  conditions: {ready: false}
"#;

fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n"
    )
}

#[test]
fn dns_serves_the_spec_records_over_udp_and_tcp() {
    let dir = TempDir::new("dnsy");
    dir.put("cluster.yaml", CLUSTER);
    let mut dns = FerryDns::start(&["--yaml-dir", dir.0.to_str().unwrap(), "--upstream", "127.0.0.1:9"]);
    let s = dns.addr;
    assert_eq!(dig_short(s, &["web.default.svc.cluster.local", "A"]), vec!["10.96.0.10"]);
    assert_eq!(dig_short(s, &["+tcp", "web.default.svc.cluster.local", "AAAA"]), vec!["fd00:96::10"]);
    assert_eq!(dig_short(s, &["dns-version.cluster.local", "TXT"]), vec!["\"1.1.0\""]);
    assert_eq!(
        dig_short(s, &["+tcp", "_http._tcp.web.default.svc.cluster.local", "SRV"]),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(dig_short(s, &["-x", "10.96.0.10"]), vec!["web.default.svc.cluster.local."]);
    // headless: ready endpoints only, per-hostname records, SRV per hostname, PTR
    assert_eq!(dig_short(s, &["db.prod.svc.cluster.local", "A"]), vec!["10.244.0.5", "10.244.0.6"]);
    assert_eq!(dig_short(s, &["db-1.db.prod.svc.cluster.local", "A"]), vec!["10.244.0.6"]);
    assert_eq!(
        dig_short(s, &["_pg._tcp.db.prod.svc.cluster.local", "SRV"]),
        vec!["0 50 5432 db-0.db.prod.svc.cluster.local.", "0 50 5432 db-1.db.prod.svc.cluster.local."]
    );
    assert_eq!(dig_short(s, &["-x", "10.244.0.5"]), vec!["db-0.db.prod.svc.cluster.local."]);
    // case-insensitive, answered in the question's case
    let out = dig(s, &["+noall", "+answer", "WEB.Default.svc.CLUSTER.local", "A"]);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["WEB.Default.svc.CLUSTER.local.", "5", "IN", "A", "10.96.0.10"]);
    // NXDOMAIN vs NODATA, both with the SOA
    let out = dig(s, &["nosuch.default.svc.cluster.local", "A"]);
    assert!(out.contains("status: NXDOMAIN") && out.contains("IN\tSOA"), "{out}");
    let out = dig(s, &["+tcp", "web.default.svc.cluster.local", "TXT"]);
    assert!(out.contains("status: NOERROR") && out.contains("ANSWER: 0") && out.contains("IN\tSOA"), "{out}");
    let out = dig(s, &["db-2.db.prod.svc.cluster.local", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "not-ready endpoint has no record: {out}");
    // health and metrics
    assert!(dns.http("/readyz").starts_with("HTTP/1.1 200"));
    assert!(dns.http("/healthz").starts_with("HTTP/1.1 200"));
    assert!(dns.metric("ferry_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}") >= 3.0);
    assert!(dns.metric("ferry_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\"}") >= 1.0);
    assert!(dns.metric("ferry_dns_request_duration_seconds_count") >= 10.0);
}

/// Poll with raw UDP until `check` holds; returns how long it took.
fn time_until(server: SocketAddr, name: &str, qt: RecordType, check: impl Fn(&Message) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if let Some(b) = udp_raw(server, &query(name, qt, false), Duration::from_millis(200)) {
            if Message::from_vec(&b).is_ok_and(|m| check(&m)) {
                return t.elapsed();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{name} never became right");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn dns_live_updates_within_100ms() {
    let dir = TempDir::new("dnsl");
    dir.put("cluster.yaml", CLUSTER);
    let dns = FerryDns::start(&["--yaml-dir", dir.0.to_str().unwrap(), "--upstream", "127.0.0.1:9"]);
    let name = "fresh.default.svc.cluster.local.";
    assert_eq!(udp(dns.addr, name, RecordType::A).metadata.response_code, ResponseCode::NXDomain);

    // added
    dir.put("fresh.yaml", &service_yaml("fresh", "10.96.7.7"));
    let added = time_until(dns.addr, name, RecordType::A, |m| a_records(m) == vec!["10.96.7.7"]);
    // changed
    dir.put("fresh.yaml", &service_yaml("fresh", "10.96.7.8"));
    let changed = time_until(dns.addr, name, RecordType::A, |m| a_records(m) == vec!["10.96.7.8"]);
    // removed
    std::fs::remove_file(dir.0.join("fresh.yaml")).unwrap();
    let removed = time_until(dns.addr, name, RecordType::A, |m| m.metadata.response_code == ResponseCode::NXDomain);
    eprintln!("live update: added {added:?} changed {changed:?} removed {removed:?}");
    for (what, t) in [("added", added), ("changed", changed), ("removed", removed)] {
        assert!(t < Duration::from_millis(100), "{what} took {t:?}");
    }
    // the rest of the zone never stopped answering
    assert_eq!(a_records(&udp(dns.addr, "web.default.svc.cluster.local.", RecordType::A)), vec!["10.96.0.10"]);
}

/// Bursts of queries from one socket, as a node-local cache or a resolver
/// sends them: under that load the server batches and sends equal-length
/// answers to one client as one UDP GSO send. Every query must still get
/// exactly one answer, as its own datagram, with its own ID and the right
/// address.
#[test]
fn dns_answers_every_query_of_a_burst_from_one_socket_once() {
    let dir = TempDir::new("dnsb");
    let mut yaml = String::new();
    for i in 0..10 {
        yaml.push_str(&service_yaml(&format!("svc-{i}"), &format!("10.96.9.{i}")));
        yaml.push_str("---\n");
    }
    dir.put("burst.yaml", &yaml);
    let mut dns = FerryDns::start(&["--yaml-dir", dir.0.to_str().unwrap(), "--upstream", "127.0.0.1:9"]);
    // Ready once the last Service answers.
    time_until(dns.addr, "svc-9.default.svc.cluster.local.", RecordType::A, |m| !m.answers.is_empty());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // Query i asks for svc-(i % 11): svc-10 does not exist (NXDOMAIN, an
    // answer of another length in the same batch).
    let expected = |id: u16| -> Option<String> { (id % 11 < 10).then(|| format!("10.96.9.{}", id % 11)) };
    let mut seen = vec![false; 4000];
    let mut buf = [0u8; 4096];
    // 100 at a time: the answers queued at the client (~100 x 768 bytes
    // of buffer) stay well inside its default receive buffer.
    for burst in 0..40u16 {
        let ids = burst * 100..burst * 100 + 100;
        for id in ids.clone() {
            let mut q = query(&format!("svc-{}.default.svc.cluster.local.", id % 11), RecordType::A, false);
            q[..2].copy_from_slice(&id.to_be_bytes());
            sock.send_to(&q, dns.addr).unwrap();
        }
        for _ in ids {
            let n = sock.recv(&mut buf).expect("an answer to every query of the burst");
            let m = Message::from_vec(&buf[..n]).expect("each datagram one whole DNS message");
            let id = m.metadata.id;
            assert!(!seen[id as usize], "query {id} answered twice");
            seen[id as usize] = true;
            let q = &m.queries[0];
            assert_eq!(q.name().to_ascii(), format!("svc-{}.default.svc.cluster.local.", id % 11));
            match expected(id) {
                Some(ip) => assert_eq!(a_records(&m), vec![ip], "answer to {id}"),
                None => assert_eq!(m.metadata.response_code, ResponseCode::NXDomain),
            }
        }
    }
    assert!(seen.iter().all(|&s| s));
    let grouped = dns.metric("ferry_dns_udp_grouped_answers_total");
    eprintln!("answers sent grouped: {grouped} of 4000");
    assert!(grouped > 0.0, "bursts from one socket were answered one send per answer");
}

fn free_port() -> u16 {
    // Both protocols must be free on the port knot gets.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// knotd serving `example.test` on 127.0.0.1:<port>, with a TXT RRset too
/// large for UDP (so forwarding must fall back to TCP).
fn start_knot(dir: &Path) -> (Daemon, SocketAddr) {
    let port = free_port();
    let mut zone = String::from(
        "$ORIGIN example.test.\n$TTL 300\n@ SOA ns admin 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\nwww A 192.0.2.10\nshort 1 A 192.0.2.11\n",
    );
    for i in 0..40 {
        zone.push_str(&format!("big TXT \"chunk-{i:02}-0123456789abcdef0123456789abcdef0123456789abcdef\"\n"));
    }
    std::fs::write(dir.join("example.test.zone"), zone).unwrap();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let d = dir.display();
    let conf = format!(
        "server:\n    rundir: {d}\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\ndatabase:\n    storage: {d}/db\nlog:\n  - target: stderr\n    any: error\ntemplate:\n  - id: default\n    storage: {d}\n    file: \"%s.zone\"\n    zonefile-load: whole\n    journal-content: none\n    semantic-checks: off\nzone:\n  - domain: example.test\n"
    );
    std::fs::write(dir.join("knot.conf"), conf).unwrap();
    let child = Command::new("knotd")
        .args(["-c", &format!("{d}/knot.conf")])
        .stdin(Stdio::null())
        .spawn()
        .expect("knotd (Debian package knot) is installed");
    let knot = Daemon(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eventually!(
        udp_raw(addr, &query("www.example.test.", RecordType::A, false), Duration::from_millis(200)).is_some(),
        Duration::from_secs(10),
        "knot answers on {addr}"
    );
    (knot, addr)
}

#[test]
fn dns_forwards_to_upstream_with_cache_and_tcp_fallback() {
    let dir = TempDir::new("dnsf");
    let knot_dir = TempDir::new("dnsk");
    let (mut knot, up) = start_knot(&knot_dir.0);
    let ext = "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: default}\nspec:\n  type: ExternalName\n  externalName: www.example.test\n";
    dir.put("cluster.yaml", &format!("{CLUSTER}---\n{ext}"));
    let mut dns = FerryDns::start(&["--yaml-dir", dir.0.to_str().unwrap(), "--upstream", &up.to_string()]);
    let s = dns.addr;

    assert_eq!(dig_short(s, &["www.example.test", "A"]), vec!["192.0.2.10"]);
    // upstream NXDOMAIN passes through with the upstream's SOA (cacheable)
    let out = dig(s, &["nope.example.test", "A"]);
    assert!(out.contains("status: NXDOMAIN") && out.contains("example.test.") && out.contains("SOA"), "{out}");
    // an answer larger than UDP allows upstream: fetched over TCP, then
    // truncated towards a no-EDNS client, which retries over TCP (dig does)
    let out = dig(s, &["+noedns", "big.example.test", "TXT"]);
    assert!(out.contains("ANSWER: 40"), "TCP fallback both ways: {out}");
    // ExternalName: CNAME plus the target's address from upstream
    let out = dig(s, &["+noall", "+answer", "ext.default.svc.cluster.local", "A"]);
    assert!(out.contains("CNAME\twww.example.test.") && out.contains("192.0.2.10"), "{out}");

    // upstream gone: cached names still answer, uncached ones SERVFAIL
    let hits_before = dns.metric("ferry_dns_cache_hits_total");
    drop(knot.0.kill());
    let _ = knot.0.wait();
    assert_eq!(dig_short(s, &["www.example.test", "A"]), vec!["192.0.2.10"]);
    assert!(dns.metric("ferry_dns_cache_hits_total") > hits_before);
    let out = dig(s, &["+time=5", "other.example.test", "A"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(dns.metric("ferry_dns_upstream_failures_total") >= 1.0);
    // search-path junk never goes upstream: NXDOMAIN, not SERVFAIL
    let out = dig(s, &["web.default.svc.cluster.local.example.test", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    // the record with TTL 1 expired from the cache: not served stale
    assert_eq!(dig_short(s, &["short.example.test", "A"]), Vec::<String>::new());
}

fn headless_yaml(name: &str, n: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: None, ports: [{{name: p, port: 1}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-a, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: p, port: 1, protocol: TCP}}]\nendpoints:\n"
    );
    for i in 0..n {
        y.push_str(&format!("- addresses: [10.244.9.{i}]\n  hostname: h-{i}\n"));
    }
    y
}

#[test]
fn dns_truncates_over_udp_and_answers_in_full_over_tcp() {
    let dir = TempDir::new("dnst");
    dir.put("big.yaml", &headless_yaml("big", 100));
    let dns = FerryDns::start(&["--yaml-dir", dir.0.to_str().unwrap(), "--upstream", "127.0.0.1:9"]);
    let s = dns.addr;
    let out = dig(s, &["+noedns", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(out.contains(" tc") && out.contains("ANSWER: 0"), "TC without partial answers: {out}");
    // dig retries over TCP on TC, as stub resolvers do
    let out = dig(s, &["+noedns", "big.default.svc.cluster.local", "A"]);
    assert!(out.contains("ANSWER: 100"), "{out}");
    let out = dig(s, &["+tcp", "_p._tcp.big.default.svc.cluster.local", "SRV"]);
    assert!(out.contains("ANSWER: 100"), "{out}");
    // EDNS 1232 fits the 100 A records (~1.7 KB)? no: still TC, then TCP
    let out = dig(s, &["+bufsize=1232", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(out.contains(" tc"), "{out}");
}

#[test]
fn dns_survives_bad_input() {
    let dir = TempDir::new("dnsb");
    dir.put("cluster.yaml", CLUSTER);
    let dns = FerryDns::start(&[
        "--yaml-dir",
        dir.0.to_str().unwrap(),
        "--upstream",
        "127.0.0.1:9",
        "--tcp-max-connections",
        "4",
        "--tcp-idle-timeout",
        "1",
    ]);
    let s = dns.addr;
    let short = Duration::from_millis(300);
    let rcode = |b: &[u8]| udp_raw(s, b, Duration::from_secs(2)).map(|r| r[3] & 0xf);
    let good = query("web.default.svc.cluster.local.", RecordType::A, false);

    // garbage and too-short packets: dropped
    assert_eq!(udp_raw(s, b"\x01\x02\x03", short), None);
    assert_eq!(udp_raw(s, &[0u8; 0], short), None);
    // a response sent to us: never answered (no reflection loops)
    let mut resp = good.clone();
    resp[2] |= 0x80;
    assert_eq!(udp_raw(s, &resp, short), None);
    // truncated question: FORMERR
    assert_eq!(rcode(&good[..good.len() - 2]), Some(1));
    // compression loop in the question: FORMERR
    let mut lp = good[..12].to_vec();
    lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(rcode(&lp), Some(1));
    // oversize label (64 bytes): FORMERR
    let mut big = good[..12].to_vec();
    big.push(64);
    big.extend_from_slice(&[b'a'; 64]);
    big.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(rcode(&big), Some(1));
    // wrong class (CHAOS TXT version.bind): REFUSED
    let mut ch = query("version.bind.", RecordType::TXT, false);
    let n = ch.len();
    ch[n - 1] = 3;
    assert_eq!(rcode(&ch), Some(5));
    // unsupported opcodes: NOTIMP (IQUERY 1, STATUS 2, NOTIFY 4, UPDATE 5)
    for op in [1u8, 2, 4, 5] {
        let mut b = good.clone();
        b[2] = (b[2] & 0x87) | (op << 3);
        assert_eq!(rcode(&b), Some(4), "opcode {op}");
    }
    // ANY: one RRset (RFC 8482), NOERROR
    let out = dig(s, &["web.default.svc.cluster.local", "ANY"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    // random bytes: whatever the verdict, the server keeps answering
    let mut x: u32 = 12345;
    for _ in 0..2000 {
        let len = (x % 80) as usize;
        let mut b = Vec::with_capacity(len);
        for _ in 0..len {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            b.push((x >> 16) as u8);
        }
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = u.send_to(&b, s);
    }
    assert_eq!(a_records(&udp(s, "web.default.svc.cluster.local.", RecordType::A)), vec!["10.96.0.10"]);

    // TCP: a connection that never sends is closed after the idle timeout
    let mut idle = TcpStream::connect(s).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    assert!(t.elapsed() < Duration::from_secs(4), "closed by the server at the idle timeout");
    // over the connection limit: extra connections are closed at once, the
    // server still answers once the holders go away
    let holders: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(s).unwrap()).collect();
    let mut framed = (good.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&good);
    // Once the server has taken the holders in (it accepts asynchronously),
    // one more connection is closed unanswered.
    assert_eventually!(
        {
            let mut extra = TcpStream::connect(s).unwrap();
            extra.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = extra.write_all(&framed);
            extra.read(&mut buf).unwrap_or(0) == 0
        },
        Duration::from_secs(5),
        "over the limit: closed"
    );
    drop(holders);
    assert_eventually!(
        dig(s, &["+tcp", "web.default.svc.cluster.local", "A"]).contains("10.96.0.10"),
        Duration::from_secs(5)
    );
    // a garbage length prefix on TCP gets the connection closed, nothing else
    let mut g = TcpStream::connect(s).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    g.write_all(&[0, 3, 1, 2, 3]).unwrap();
    assert_eq!(g.read(&mut buf).unwrap_or(0), 0);
    assert_eq!(a_records(&udp(s, "web.default.svc.cluster.local.", RecordType::A)), vec!["10.96.0.10"]);
}
