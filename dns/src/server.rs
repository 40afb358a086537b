//! Listeners and the catalog follower.
//!
//! UDP: one blocking worker thread per usable CPU, each with its own
//! SO_REUSEPORT socket, reading and writing in batches with
//! recvmmsg/sendmmsg — the kernel socket calls dominate the cost of an
//! answer, so fewer of them is what makes the cluster zone fast. Queries that
//! need the network are handed to the tokio runtime and answered from there.
//!
//! TCP (RFC 7766): tokio, a cap on concurrent connections and an idle
//! timeout so slow or silent clients cannot hold the server.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_state::Snapshot;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::answer::{answer_fast, answer_slow, Fast, Shared, Transport};
use crate::udp::{Inbox, Outbox, BATCH};
use crate::wire::Query;
use crate::zone::{ZoneCache, ZoneError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {proto} {addr}: {source}")]
    Bind { proto: &'static str, addr: SocketAddr, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub tcp_max_connections: usize,
    pub tcp_idle: Duration,
    /// 0: one UDP worker per CPU this process may run on.
    pub udp_workers: usize,
    /// How long a busy UDP worker lets queries gather before its next
    /// receive (zero: never waits).
    pub udp_coalesce: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tcp_max_connections: 256,
            tcp_idle: Duration::from_secs(10),
            udp_workers: 0,
            udp_coalesce: Duration::from_micros(50),
        }
    }
}

/// A query the UDP fast path could not finish.
struct SlowJob {
    msg: Vec<u8>,
    query: Query,
    peer: SocketAddr,
    socket: Arc<UdpSocket>,
    start: Instant,
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // Bursts of queries queue here instead of being dropped while the
    // worker is busy with a batch.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Bind UDP and TCP on the same address. With port 0, the UDP port the
/// kernel picks is reused for TCP (retrying if TCP has it taken).
pub fn bind(listen: SocketAddr, workers: usize) -> Result<(Vec<UdpSocket>, StdTcpListener), ServerError> {
    for _ in 0..20 {
        let first = udp_socket(listen).map_err(|source| ServerError::Bind { proto: "udp", addr: listen, source })?;
        let addr = first.local_addr().map_err(|source| ServerError::Bind { proto: "udp", addr: listen, source })?;
        let tcp = match tcp_listener(addr) {
            Ok(t) => t,
            Err(_) if listen.port() == 0 => continue,
            Err(source) => return Err(ServerError::Bind { proto: "tcp", addr, source }),
        };
        let mut socks = vec![first];
        for _ in 1..workers.max(1) {
            socks.push(udp_socket(addr).map_err(|source| ServerError::Bind { proto: "udp", addr, source })?);
        }
        return Ok((socks, tcp));
    }
    Err(ServerError::Bind { proto: "tcp", addr: listen, source: io::Error::other("no free port for udp+tcp") })
}

fn tcp_listener(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

pub fn worker_count(limits: &Limits) -> usize {
    if limits.udp_workers > 0 {
        return limits.udp_workers;
    }
    // available_parallelism honours the CPU affinity mask, so a server
    // pinned with taskset gets one worker per CPU it may use.
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Adaptive coalescing, as a NIC's adaptive interrupt moderation: while a
/// worker receives more than BUSY_QPS queries a second, it waits a moment
/// before each receive so that receive, the answers' send and the answers
/// to one client (UDP GSO) each carry more queries. Below that rate every
/// query is answered as soon as it arrives, so latency at ordinary load is
/// untouched.
struct Coalescer {
    wait: Duration,
    window_start: Instant,
    window_queries: u64,
    busy: bool,
}

const BUSY_QPS: u64 = 50_000;
/// Long enough that a burst at a lower rate does not count as busy (at a
/// steady 20,000 a second, 2 ms windows tripped ~3 times a second and the
/// waits that followed showed in the p99).
const RATE_WINDOW: Duration = Duration::from_millis(10);

impl Coalescer {
    fn new(wait: Duration) -> Self {
        if !wait.is_zero() {
            // The default timer slack (50 us) would stretch a short wait
            // several times over.
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
            }
        }
        Self { wait, window_start: Instant::now(), window_queries: 0, busy: false }
    }

    /// Called after each receive of `n` queries, at `now`.
    fn received(&mut self, n: usize, now: Instant) {
        self.window_queries += n as u64;
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.busy = self.window_queries * 1_000_000 > BUSY_QPS * elapsed.as_micros() as u64;
            self.window_start = now;
            self.window_queries = 0;
        }
    }

    /// Before a receive: wait if busy, unless the last batch came back
    /// full (more are waiting already).
    fn pause(&self, last_batch: usize) {
        if self.busy && !self.wait.is_zero() && last_batch < BATCH {
            std::thread::sleep(self.wait);
        }
    }
}

/// The blocking UDP loop of one worker.
fn udp_worker(sock: Arc<UdpSocket>, shared: Arc<Shared>, slow: mpsc::Sender<SlowJob>, coalesce: Duration) {
    let fd = sock.as_raw_fd();
    let mut inbox = Inbox::default();
    let mut outbox = Outbox::new(true);
    let mut coalescer = Coalescer::new(coalesce);
    loop {
        coalescer.pause(inbox.len());
        let n = match inbox.recv(fd) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "recvmmsg failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        let start = Instant::now();
        coalescer.received(n, start);
        let (zone, ready) = shared.zone();
        // The lookups' memory reads are what the answers wait for: start
        // them for the whole batch (slots, then records) before answering.
        let mut hashes = [None; BATCH];
        for (i, h) in hashes.iter_mut().enumerate().take(n) {
            *h = crate::wire::question_hash(inbox.buf(i));
            if let Some(h) = *h {
                zone.prefetch(h, false);
            }
        }
        for h in hashes.iter().take(n).flatten() {
            zone.prefetch(*h, true);
        }
        for i in 0..n {
            // A datagram larger than the buffer is no query we could answer.
            let Some(msg) = inbox.msg(i) else {
                shared.metrics.dropped.inc();
                continue;
            };
            match answer_fast(&zone, ready, msg, Transport::Udp, outbox.next_buf()) {
                Fast::Done { qtype, rcode } => {
                    shared.metrics.count(qtype, rcode);
                    if shared.query_log {
                        log_query(msg, qtype, rcode, "udp");
                    }
                    outbox.commit(i);
                }
                Fast::Drop => {
                    shared.metrics.dropped.inc();
                }
                Fast::Slow(query) => {
                    let Some(peer) = inbox.peer(i) else {
                        continue;
                    };
                    let job = SlowJob { msg: msg.to_vec(), query, peer, socket: sock.clone(), start };
                    // A full queue means the upstreams are far behind: shed
                    // load rather than buffer without bound.
                    if slow.try_send(job).is_err() {
                        shared.metrics.dropped.inc();
                    }
                }
            }
        }
        let answered = outbox.len();
        let grouped = outbox.flush(fd, &inbox);
        if grouped > 0 {
            shared.metrics.udp_grouped.inc_by(grouped as u64);
        }
        let secs = start.elapsed().as_secs_f64();
        for _ in 0..answered {
            shared.metrics.latency.observe(secs);
        }
    }
}

fn log_query(msg: &[u8], qtype: u16, rcode: crate::wire::Rcode, proto: &str) {
    let name = crate::wire::parse_query(msg).map(|q| q.name_ascii()).unwrap_or_default();
    tracing::info!(target: "ferry_dns::query", %name, qtype, rcode = rcode.label(), proto, "query");
}

async fn slow_worker(shared: Arc<Shared>, mut rx: mpsc::Receiver<SlowJob>) {
    let limit = Arc::new(Semaphore::new(1024));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (out, rcode) = answer_slow(&shared, &job.msg, &job.query, Transport::Udp).await;
            let _ = job.socket.send_to(&out, job.peer);
            shared.metrics.count(job.query.qtype, rcode);
            shared.metrics.latency.observe(job.start.elapsed().as_secs_f64());
            if shared.query_log {
                log_query(&job.msg, job.query.qtype, rcode, "udp");
            }
            drop(permit);
        });
    }
}

async fn tcp_server(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
    let conns = Arc::new(Semaphore::new(limits.tcp_max_connections));
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            // Over the limit: close at once rather than queue (RFC 7766 §6.1).
            shared.metrics.tcp_rejected.inc();
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let idle = limits.tcp_idle;
        tokio::spawn(async move {
            let _ = tcp_conn(stream, &shared, idle).await;
            drop(permit);
        });
    }
}

async fn tcp_conn(mut s: TcpStream, shared: &Shared, idle: Duration) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(4096);
    loop {
        // The idle timeout covers a whole message, so a client trickling
        // bytes cannot keep the connection past it either.
        let read = async {
            let len = s.read_u16().await? as usize;
            buf.resize(len, 0);
            s.read_exact(&mut buf).await?;
            io::Result::Ok(())
        };
        match tokio::time::timeout(idle, read).await {
            Ok(Ok(())) => {}
            _ => return Ok(()),
        }
        let start = Instant::now();
        let (zone, ready) = shared.zone();
        let (qtype, rcode) = match answer_fast(&zone, ready, &buf, Transport::Tcp, &mut out) {
            Fast::Done { qtype, rcode } => (qtype, rcode),
            Fast::Drop => {
                shared.metrics.dropped.inc();
                return Ok(());
            }
            Fast::Slow(q) => {
                let (o, rc) = answer_slow(shared, &buf, &q, Transport::Tcp).await;
                out = o;
                (q.qtype, rc)
            }
        };
        shared.metrics.count(qtype, rcode);
        shared.metrics.latency.observe(start.elapsed().as_secs_f64());
        if shared.query_log {
            log_query(&buf, qtype, rcode, "tcp");
        }
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        tokio::time::timeout(idle, s.write_all(&framed)).await.map_err(|_| io::ErrorKind::TimedOut)??;
    }
}

/// Hand memory freed by a rebuild (the old zone, the build's scratch
/// records) back to the OS; glibc keeps it in its arenas otherwise, and
/// the resident size would stay at the build's peak.
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Rebuild and swap the zone on every catalog change, once the source has
/// completed its first load.
/// `built` is the generation already installed, if any, and `cache` the
/// builder that made it (so unchanged Services are reused).
pub async fn follow_catalog(
    shared: Arc<Shared>,
    mut rx: watch::Receiver<Snapshot>,
    mut built: Option<u64>,
    cache: ZoneCache,
) {
    let mut cache = Some(cache);
    loop {
        let snap = rx.borrow_and_update().clone();
        if snap.ready && built != Some(snap.generation) {
            let t = Instant::now();
            let cat = snap.catalog.clone();
            let mut c = cache.take().unwrap_or_else(|| ZoneCache::new(shared.zone_config.clone()));
            let (c, result) = match tokio::task::spawn_blocking(move || {
                let r = c.build(&cat);
                (c, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "zone build task failed");
                    (ZoneCache::new(shared.zone_config.clone()), Err(ZoneError::Panicked))
                }
            };
            cache = Some(c);
            match result {
                Ok(zone) => {
                    let names = zone.len();
                    shared.set_zone(Arc::new(zone));
                    shared.metrics.zone_rebuilds.inc();
                    built = Some(snap.generation);
                    tracing::info!(
                        generation = snap.generation,
                        services = snap.catalog.services.len(),
                        names,
                        build_ms = t.elapsed().as_millis() as u64,
                        "cluster zone updated"
                    );
                    release_freed_memory();
                }
                Err(e) => tracing::error!(error = %e, "building the cluster zone"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Start the listeners on already-bound sockets; returns when the runtime
/// shuts down (never, in normal operation).
pub async fn serve(shared: Arc<Shared>, udp: Vec<UdpSocket>, tcp: StdTcpListener, limits: Limits) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(slow_worker(shared.clone(), rx));
    let coalesce = limits.udp_coalesce;
    for (i, s) in udp.into_iter().enumerate() {
        let s = Arc::new(s);
        let (shared, tx) = (shared.clone(), tx.clone());
        std::thread::Builder::new().name(format!("dns-udp-{i}")).spawn(move || udp_worker(s, shared, tx, coalesce))?;
    }
    let tcp = TcpListener::from_std(tcp)?;
    tcp_server(tcp, shared, limits).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `per_ms` queries a millisecond for `ms` milliseconds, in
    /// receives of `batch`; returns whether the coalescer ends up busy.
    fn busy_after(c: &mut Coalescer, t: &mut Instant, per_ms: usize, ms: u64, batch: usize) -> bool {
        for _ in 0..ms {
            let step = Duration::from_micros(1000 * batch as u64 / per_ms as u64);
            let mut got = 0;
            while got < per_ms {
                *t += step;
                c.received(batch, *t);
                got += batch;
            }
        }
        c.busy
    }

    #[test]
    fn coalescing_only_above_the_busy_rate() {
        let mut t = Instant::now();
        let mut c = Coalescer::new(Duration::from_micros(50));
        c.window_start = t;
        // 20,000 queries a second, even in bursts of 8: answered at once.
        assert!(!busy_after(&mut c, &mut t, 20, 30, 1));
        assert!(!busy_after(&mut c, &mut t, 20, 30, 4));
        // 150,000 a second: wait before each receive.
        assert!(busy_after(&mut c, &mut t, 150, 30, 5));
        // And back to answering at once when the load drops.
        assert!(!busy_after(&mut c, &mut t, 10, 30, 1));
    }
}
