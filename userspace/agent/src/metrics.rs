//! Prometheus metrics and the health endpoints, on a minimal HTTP/1.1
//! listener (three GET paths do not justify a web framework).
//!
//! Agent-side metrics (sync duration, programmed counts) are kept in the
//! registry; data-path counters are read from the pinned per-CPU maps at
//! scrape time by [`MapCollector`], so they are exact and cost nothing
//! between scrapes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_common::{DropReason, GlobalCounter};
use ferry_datapath::Maps;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::diff::Programmed;
use crate::names;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub sync_failures: Counter,
    services: Gauge,
    backends: Gauge,
    ready: AtomicBool,
    /// Successful syncs, and the catalog generation of the last one.
    pub syncs: AtomicU64,
    pub generation: AtomicU64,
    /// The catalog source's state, for /status.
    source: Option<tokio::sync::watch::Receiver<ferry_state::SourceStatus>>,
    /// The routing task's state, for /status (and its metrics).
    routing: Option<Arc<crate::routing::task::Shared>>,
    /// The masquerade's state, for /status (and its metrics).
    masquerade: Option<Arc<crate::masq::Shared>>,
}

impl Metrics {
    pub fn new(
        collector: Option<MapCollector>,
        source: Option<tokio::sync::watch::Receiver<ferry_state::SourceStatus>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("ferry");
        // 50 us .. ~1.6 s: an endpoint change is expected well under 10 ms,
        // a cold 10,000-Service sync under 1 s.
        let sync_duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 16));
        registry.register(
            "sync_duration_seconds",
            "Time to translate, diff and apply one catalog change",
            sync_duration.clone(),
        );
        let sync_failures = Counter::default();
        registry.register("sync_failures", "Syncs whose map writes failed (retried)", sync_failures.clone());
        let services = Gauge::default();
        registry.register(
            "services_programmed",
            "Frontends (VIP, port, protocol) in the services map",
            services.clone(),
        );
        let backends = Gauge::default();
        registry.register("backends_programmed", "Entries in the backends map", backends.clone());
        if let Some(c) = collector {
            registry.register_collector(Box::new(c));
        }
        if let Some(status) = &source {
            registry.register_collector(Box::new(ferry_state::source::StatusCollector::new(status.clone())));
        }
        Self {
            registry,
            sync_duration,
            sync_failures,
            services,
            backends,
            ready: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            source,
            routing: None,
            masquerade: None,
        }
    }

    /// Adds the routing task's state to /status and /metrics.
    pub fn set_routing(&mut self, shared: Arc<crate::routing::task::Shared>) {
        self.registry.register_collector(Box::new(crate::routing::task::RoutingCollector(shared.clone())));
        self.routing = Some(shared);
    }

    /// Adds the masquerade's state to /status and /metrics.
    pub fn set_masquerade(&mut self, shared: Arc<crate::masq::Shared>, pin_dir: std::path::PathBuf) {
        self.registry.register_collector(Box::new(crate::masq::MasqCollector(shared.clone(), pin_dir)));
        self.masquerade = Some(shared);
    }

    pub fn set_programmed(&self, p: &Programmed) {
        self.services.set(p.frontends.len() as i64);
        self.backends.set(p.backend_count() as i64);
    }

    pub fn synced(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.syncs.fetch_add(1, Ordering::AcqRel);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// `/status`: readiness, syncs applied, the catalog generation of the
    /// last one, and the source's state per kind.
    pub fn status(&self) -> String {
        let source = self.source.as_ref().map(|s| s.borrow().clone());
        let v = serde_json::json!({
            "ready": self.is_ready(),
            "syncs": self.syncs.load(Ordering::Acquire),
            "generation": self.generation.load(Ordering::Acquire),
            "source": source,
            "routing": self.routing.as_ref().map(|r| r.snapshot()),
            "masquerade": self.masquerade.as_ref().map(|m| m.snapshot()),
        });
        v.to_string() + "\n"
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Reads the data path's counters from the pinned maps on each scrape.
#[derive(Debug)]
pub struct MapCollector {
    maps: Mutex<MapsCell>,
    names_file: PathBuf,
}

struct MapsCell(Maps);

impl std::fmt::Debug for MapsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maps")
    }
}

impl MapCollector {
    pub fn new(maps: Maps, names_file: PathBuf) -> Self {
        Self { maps: Mutex::new(MapsCell(maps)), names_file }
    }
}

type Labels = Vec<(String, String)>;

fn encode_family<M: EncodeMetric + prometheus_client::metrics::TypedMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut enc = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, m) in rows {
        m.encode(enc.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for MapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(cell) = self.maps.lock() else {
            return Ok(());
        };
        let maps = &cell.0;
        let names = names::read(&self.names_file);
        // Per-service packets and bytes: only ids that are programmed now.
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for (_, v) in maps.services.iter().filter_map(Result::ok) {
            let Ok(per_cpu) = maps.service_stats.get(&v.id, 0) else { continue };
            let (p, b) = per_cpu.iter().fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
            let (svc, port) = names
                .get(&v.id)
                .map(|n| (n.service.clone(), n.port_name.clone()))
                .unwrap_or_else(|| (format!("id:{}", v.id), String::new()));
            let labels =
                vec![("service".to_string(), svc), ("port".to_string(), port), ("id".to_string(), v.id.to_string())];
            packets.push((labels.clone(), ConstCounter::new(p)));
            bytes.push((labels, ConstCounter::new(b)));
        }
        encode_family(&mut encoder, "service_packets", "Packets of new and established flows to a frontend", packets)?;
        encode_family(&mut encoder, "service_bytes", "Bytes of packets to a frontend", bytes)?;

        let sum = |m: &aya::maps::PerCpuArray<aya::maps::MapData, u64>, i: u32| {
            m.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0)
        };
        let drops = DropReason::ALL
            .iter()
            .map(|r| {
                (vec![("reason".to_string(), r.as_str().to_string())], ConstCounter::new(sum(&maps.drops, *r as u32)))
            })
            .collect();
        encode_family(&mut encoder, "drops", "Packets dropped by the data path, by reason", drops)?;
        for c in GlobalCounter::ALL {
            let value = ConstCounter::new(sum(&maps.global, c as u32));
            encode_family(&mut encoder, c.name(), c.help(), vec![(Vec::new(), value)])?;
        }
        let ct_entries = maps.conntrack.keys().filter(Result::is_ok).count() as i64;
        encode_family(
            &mut encoder,
            "conntrack_entries",
            "Entries in the conntrack map",
            vec![(Vec::new(), ConstGauge::new(ct_entries))],
        )?;
        Ok(())
    }
}

/// Serves /metrics, /healthz and /readyz until the runtime stops.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "metrics listening");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read until the end of the request head (no bodies expected).
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    // Reading maps is blocking syscalls: off the async workers.
                    let m = metrics.clone();
                    let body = tokio::task::spawn_blocking(move || m.encode()).await.unwrap_or_default();
                    ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
                }
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                // For scripts that must wait for a change to land (the
                // benchmark hook): how many syncs have been applied.
                "/status" => ("200 OK", "application/json", metrics.status()),
                "/readyz" if metrics.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "text/plain", "waiting for the first full sync\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_and_metrics_endpoints() {
        let metrics = Arc::new(Metrics::new(None, None));
        metrics.sync_duration.observe(0.002);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::spawn(serve(addr, metrics.clone()));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("no listener");
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        metrics.set_ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.contains("ferry_sync_duration_seconds_count 1"), "{m}");
        assert!(m.contains("ferry_services_programmed"));
        metrics.synced(7);
        let status = get("/status").await;
        assert!(status.contains("\"syncs\":1") && status.contains("\"generation\":7"), "{status}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}
