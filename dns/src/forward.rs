//! Forwarding of names outside the cluster zone to the node's upstream
//! resolvers: UDP first, TCP when the answer comes back truncated
//! (RFC 7766 §5), behind a bounded cache that honours record TTLs and
//! caches negative answers for the SOA's negative TTL (RFC 2308 §5).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    #[error("all upstreams failed for {name} {qtype}: {last}")]
    AllFailed { name: String, qtype: RecordType, last: String },
    #[error("reading {path}: {source}")]
    ResolvConf { path: String, source: std::io::Error },
}

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, ForwardError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ForwardError::ResolvConf { path: path.display().to_string(), source })?;
    Ok(parse_resolv_conf(&text))
}

pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // a scoped IPv6 address (fe80::1%eth0) is not supported: skipped
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct CacheEntry {
    msg: Message,
    stored: Instant,
    ttl: Duration,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<(String, u16), CacheEntry>>,
    cache_max: usize,
    /// Largest TTL kept, so a record with a week-long TTL cannot pin memory.
    max_ttl: Duration,
    ids: AtomicU64,
    id_seed: std::collections::hash_map::RandomState,
    metrics: Metrics,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration, cache_max: usize, metrics: Metrics) -> Self {
        Self {
            upstreams,
            timeout,
            cache: Mutex::new(HashMap::new()),
            cache_max,
            max_ttl: Duration::from_secs(3600),
            ids: AtomicU64::new(0),
            id_seed: Default::default(),
            metrics,
        }
    }

    /// Unpredictable message IDs (RFC 5452 §4.3), together with a fresh
    /// ephemeral port per query.
    fn next_id(&self) -> u16 {
        let mut h = self.id_seed.build_hasher();
        h.write_u64(self.ids.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// Answer `name`/`qtype` from the cache or the upstreams. The returned
    /// message's records carry the remaining TTL.
    pub async fn resolve(&self, name: &Name, qtype: RecordType) -> Result<Message, ForwardError> {
        let key = (name.to_lowercase().to_ascii(), u16::from(qtype));
        if let Some(m) = self.cached(&key) {
            self.metrics.cache_hits.inc();
            return Ok(m);
        }
        self.metrics.cache_misses.inc();
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let mut last = String::new();
        for up in &self.upstreams {
            match self.exchange(*up, name, qtype).await {
                Ok(m) if matches!(m.metadata.response_code, ResponseCode::NoError | ResponseCode::NXDomain) => {
                    self.store(key, &m);
                    return Ok(m);
                }
                Ok(m) => last = format!("{up}: {}", m.metadata.response_code),
                Err(e) => last = format!("{up}: {e}"),
            }
            self.metrics.upstream_failures.inc();
            tracing::debug!(upstream = %up, %name, ?qtype, error = %last, "upstream failed");
        }
        Err(ForwardError::AllFailed { name: name.to_ascii(), qtype, last })
    }

    fn cached(&self, key: &(String, u16)) -> Option<Message> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let e = cache.get(key)?;
        let age = e.stored.elapsed();
        if age >= e.ttl {
            return None;
        }
        let mut m = e.msg.clone();
        let spent = age.as_secs() as u32;
        for r in m.answers.iter_mut().chain(m.authorities.iter_mut()).chain(m.additionals.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(spent);
        }
        Some(m)
    }

    fn store(&self, key: (String, u16), m: &Message) {
        let ttl = cache_ttl(m).min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.cache_max {
            // Expired entries go first; if the cache is still full, an
            // arbitrary tenth makes room — bounded memory matters more here
            // than a perfect LRU.
            cache.retain(|_, e| e.stored.elapsed() < e.ttl);
            if cache.len() >= self.cache_max {
                let drop: Vec<_> = cache.keys().take(self.cache_max / 10 + 1).cloned().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key, CacheEntry { msg: m.clone(), stored: Instant::now(), ttl });
    }

    async fn exchange(&self, up: SocketAddr, name: &Name, qtype: RecordType) -> Result<Message, String> {
        let mut q = Message::new(self.next_id(), MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(crate::wire::MAX_UDP_PAYLOAD);
        q.set_edns(edns);
        let bytes = q.to_vec().map_err(|e| e.to_string())?;
        let m = tokio::time::timeout(self.timeout, self.udp(up, &bytes, &q))
            .await
            .map_err(|_| "timeout (udp)".to_string())??;
        if !m.metadata.truncation {
            return Ok(m);
        }
        tokio::time::timeout(self.timeout, tcp(up, &bytes, &q)).await.map_err(|_| "timeout (tcp)".to_string())?
    }

    async fn udp(&self, up: SocketAddr, bytes: &[u8], q: &Message) -> Result<Message, String> {
        let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        sock.connect(up).await.map_err(|e| e.to_string())?;
        sock.send(bytes).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Ignore anything that is not the answer to this question
            // (spoofing, stale replies): keep waiting until the timeout.
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if matches_query(&m, q) {
                    return Ok(m);
                }
            }
        }
    }
}

async fn tcp(up: SocketAddr, bytes: &[u8], q: &Message) -> Result<Message, String> {
    let mut s = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.map_err(|e| e.to_string())?;
    let len = s.read_u16().await.map_err(|e| e.to_string())? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
    if !matches_query(&m, q) {
        return Err("tcp answer does not match the question".into());
    }
    Ok(m)
}

fn matches_query(m: &Message, q: &Message) -> bool {
    m.metadata.id == q.metadata.id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && q.queries.first().is_some_and(|qq| {
            let a = &m.queries[0];
            a.query_type() == qq.query_type() && a.name().to_lowercase() == qq.name().to_lowercase()
        })
}

/// How long an answer may be cached: the smallest answer TTL; for a
/// negative answer min(SOA TTL, SOA MINIMUM) — and not at all without an
/// SOA (RFC 2308 §5).
pub fn cache_ttl(m: &Message) -> Duration {
    let secs = if m.answers.is_empty() || m.metadata.response_code == ResponseCode::NXDomain {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(0)
    } else {
        m.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    Duration::from_secs(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Record;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# comment\nsearch a.b\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\noptions ndots:5\n";
        let v = parse_resolv_conf(t);
        assert_eq!(v, vec!["10.0.0.2:53".parse().unwrap(), "[fd00::53]:53".parse().unwrap()]);
    }

    #[test]
    fn ttl_rules() {
        let n = Name::from_ascii("x.example.").unwrap();
        let mut pos = Message::response(1, OpCode::Query);
        pos.add_answer(Record::from_rdata(n.clone(), 300, RData::A(A::new(1, 2, 3, 4))));
        pos.add_answer(Record::from_rdata(n.clone(), 60, RData::A(A::new(1, 2, 3, 5))));
        assert_eq!(cache_ttl(&pos), Duration::from_secs(60));
        let mut neg = Message::response(1, OpCode::Query);
        neg.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(cache_ttl(&neg), Duration::ZERO, "no SOA: not cached");
        let soa = SOA::new(n.clone(), n.clone(), 1, 1, 1, 1, 30);
        neg.add_authority(Record::from_rdata(n, 900, RData::SOA(soa)));
        assert_eq!(cache_ttl(&neg), Duration::from_secs(30), "min(SOA TTL, MINIMUM)");
    }
}
