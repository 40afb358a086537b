//! Prometheus metrics and the small HTTP endpoint serving them with the
//! health probes (`/metrics`, `/healthz`, `/readyz`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::wire::{qtype, Rcode};

/// Query types with their own label; everything else is "other", so a
/// client sending random types cannot grow the label set.
const QTYPES: [(u16, &str); 10] = [
    (qtype::A, "A"),
    (qtype::AAAA, "AAAA"),
    (qtype::SRV, "SRV"),
    (qtype::PTR, "PTR"),
    (qtype::TXT, "TXT"),
    (qtype::CNAME, "CNAME"),
    (qtype::SOA, "SOA"),
    (qtype::NS, "NS"),
    (qtype::ANY, "ANY"),
    (0, "other"),
];
const RCODES: [Rcode; 7] =
    [Rcode::NoError, Rcode::FormErr, Rcode::ServFail, Rcode::NxDomain, Rcode::NotImp, Rcode::Refused, Rcode::BadVers];

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Counters resolved once per (qtype, rcode), so the hot path is one
    /// atomic add instead of a label-set hash lookup.
    queries: Arc<[Counter]>,
    pub latency: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub upstream_failures: Counter,
    pub dropped: Counter,
    pub zone_names: Gauge,
    pub zone_rebuilds: Counter,
    pub tcp_rejected: Counter,
    pub udp_grouped: Counter,
    pub ready: Arc<AtomicBool>,
    /// The catalog source's state, for /status.
    source: Option<tokio::sync::watch::Receiver<ferry_state::SourceStatus>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_source(None)
    }

    /// Also exports the catalog source's state (metrics and /status).
    pub fn with_source(source: Option<tokio::sync::watch::Receiver<ferry_state::SourceStatus>>) -> Self {
        let mut registry = Registry::with_prefix("ferry_dns");
        if let Some(status) = &source {
            registry.register_collector(Box::new(ferry_state::source::StatusCollector::new(status.clone())));
        }
        let family = Family::<Labels, Counter>::default();
        let mut queries = Vec::new();
        for (_, t) in QTYPES {
            for rc in RCODES {
                let labels = vec![("qtype".to_string(), t.to_string()), ("rcode".to_string(), rc.label().to_string())];
                queries.push(family.get_or_create_owned(&labels));
            }
        }
        registry.register("queries", "DNS queries answered, by query type and response code", family);
        // 10 µs .. ~5 s: the cluster zone answers in microseconds, forwarded
        // names in milliseconds.
        let latency = Histogram::new(exponential_buckets(0.00001, 2.5, 15));
        registry.register(
            "request_duration_seconds",
            "Time from receiving a query to sending its answer",
            latency.clone(),
        );
        let m = Metrics {
            queries: queries.into(),
            latency,
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            upstream_failures: Counter::default(),
            dropped: Counter::default(),
            zone_names: Gauge::default(),
            zone_rebuilds: Counter::default(),
            tcp_rejected: Counter::default(),
            udp_grouped: Counter::default(),
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(Registry::default()),
            source,
        };
        registry.register("cache_hits", "Forwarded names answered from the cache", m.cache_hits.clone());
        registry.register("cache_misses", "Forwarded names not in the cache", m.cache_misses.clone());
        registry.register(
            "upstream_failures",
            "Upstream exchanges that failed or timed out",
            m.upstream_failures.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets dropped without an answer (unparseable, or responses)",
            m.dropped.clone(),
        );
        registry.register("zone_names", "Names in the cluster zone", m.zone_names.clone());
        registry.register("zone_rebuilds", "Cluster zone rebuilds from the catalog", m.zone_rebuilds.clone());
        registry.register("tcp_rejected", "TCP connections refused over the concurrency limit", m.tcp_rejected.clone());
        registry.register(
            "udp_grouped_answers",
            "UDP answers sent in one GSO send with others to the same client",
            m.udp_grouped.clone(),
        );
        Metrics { registry: Arc::new(registry), ..m }
    }

    /// `/status`: readiness and the source's state per kind.
    pub fn status(&self) -> String {
        let source = self.source.as_ref().map(|s| s.borrow().clone());
        let v = serde_json::json!({ "ready": self.ready.load(Ordering::Relaxed), "source": source });
        v.to_string() + "\n"
    }

    #[inline]
    pub fn count(&self, qt: u16, rc: Rcode) {
        let ti = QTYPES.iter().position(|(t, _)| *t == qt).unwrap_or(QTYPES.len() - 1);
        let ri = RCODES.iter().position(|r| *r == rc).unwrap_or(2);
        self.queries[ti * RCODES.len() + ri].inc();
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` (HTTP/1.0-style: one request
/// per connection; enough for probes and scrapers).
pub async fn serve_http(listener: TcpListener, metrics: Metrics) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the request head (clients may send it in pieces), bounded
            // in size and time.
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                std::io::Result::Ok(())
            })
            .await;
            let Ok(Ok(())) = read else { return };
            let req = String::from_utf8_lossy(&buf);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
                }
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/status" => ("200 OK", "application/json", metrics.status()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => ("200 OK", "text/plain", "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "text/plain", "catalog not loaded yet\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
