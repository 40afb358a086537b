//! Tiny servers that run inside a pod and answer with an identifier, and the
//! matching clients. Used to see which backend a connection reached.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_netlink::Netns;

use super::node::Pod;

/// A TCP or UDP server on `[::]:port` inside a namespace (dual-stack, so it
/// answers IPv4 too). TCP: on accept it writes `<id>\n`, then echoes what it
/// receives until the client closes. UDP: every datagram is answered with
/// `<id>\n` followed by the datagram. Stops on drop.
#[derive(Debug)]
pub struct IdServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
}

impl IdServer {
    pub fn tcp(netns: &Path, port: u16, id: &str) -> Self {
        Self::start(netns, port, id, true)
    }

    pub fn udp(netns: &Path, port: u16, id: &str) -> Self {
        Self::start(netns, port, id, false)
    }

    fn start(netns: &Path, port: u16, id: &str, tcp: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let netns = netns.to_path_buf();
        let id = id.to_string();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = Netns::open(&netns).expect("open netns");
            let _g = ns.enter().expect("enter netns");
            let addr: SocketAddr = format!("[::]:{port}").parse().expect("addr");
            if tcp {
                let l = TcpListener::bind(addr).expect("bind tcp");
                ready_tx.send(()).expect("ready");
                tcp_loop(l, &id, &stop2);
            } else {
                let s = UdpSocket::bind(addr).expect("bind udp");
                s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
                ready_tx.send(()).expect("ready");
                udp_loop(s, &id, &stop2);
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("server did not start");
        IdServer { stop, thread: Some(thread), port }
    }
}

fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn tcp_loop(l: TcpListener, id: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Wake up every 50 ms to notice `stop`; connections wait in the backlog.
        if !readable(l.as_raw_fd(), 50) {
            continue;
        }
        let Ok((mut c, _)) = l.accept() else { continue };
        let msg = format!("{id}\n");
        std::thread::spawn(move || {
            if c.write_all(msg.as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 16384];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

fn udp_loop(s: UdpSocket, id: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            let mut out = format!("{id}\n").into_bytes();
            out.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&out, peer);
        }
    }
}

impl Drop for IdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects (in the calling thread's namespace) and returns the first line
/// the server sends. Use from inside `Pod::run`.
pub fn tcp_id(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// `n` fresh connections from inside `pod` to `addr`, each reading the
/// backend's id: the count per id (errors counted under "error: <kind>").
pub fn tcp_spread(pod: &Pod, addr: SocketAddr, n: usize, timeout: Duration) -> BTreeMap<String, usize> {
    pod.run(move || {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let id = tcp_id(addr, timeout).unwrap_or_else(|e| format!("error: {:?}", e.kind()));
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    })
}

/// Sends one datagram and returns the first line of the answer.
pub fn udp_id(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("addr");
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"ping", addr)?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Sends `payload` as one datagram to a UDP [`IdServer`] and returns what
/// came back after its id line: the echo, whole, if it arrived.
pub fn udp_echo(addr: SocketAddr, payload: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("addr");
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(payload, addr)?;
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf)?;
    let nl = buf[..n].iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(buf[nl..n].to_vec())
}

/// A connection kept open to an [`IdServer`]: the server wrote its id on
/// accept and echoes. Open it from inside `Pod::run`.
#[derive(Debug)]
pub struct Held {
    conn: BufReader<TcpStream>,
    /// The id of the server that accepted it.
    pub backend: String,
}

impl Held {
    pub fn open(addr: SocketAddr) -> std::io::Result<Held> {
        let c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut conn = BufReader::new(c);
        let mut id = String::new();
        conn.read_line(&mut id)?;
        Ok(Held { conn, backend: id.trim_end().to_string() })
    }

    /// One echo round trip: the connection still works, with its backend.
    pub fn ping(&mut self, n: usize) -> std::io::Result<()> {
        let msg = format!("ping {n}\n");
        self.conn.get_mut().write_all(msg.as_bytes())?;
        let mut back = String::new();
        self.conn.read_line(&mut back)?;
        if back != msg {
            return Err(std::io::Error::other(format!("echo mismatch: {back:?}")));
        }
        Ok(())
    }
}
