//! Batched UDP I/O for the fast path: a batch of queries in with one
//! recvmmsg, their answers out with one sendmmsg.
//!
//! Answers of equal length to the same client leave as one UDP GSO send
//! (UDP_SEGMENT): the kernel builds, routes and queues one packet for the
//! group and splits it into ordinary datagrams only at the end (on the
//! receiving socket over loopback, in software or on the NIC otherwise), so
//! the client still gets one datagram per answer. Most of the cost of an
//! answer is that per-packet trip through the stack, and clients that send
//! many queries from one socket — node-local caches, resolvers, benchmarks —
//! get answers of equal length in runs (every A answer for names of one
//! shape). A kernel or route that refuses GSO (no checksum offload, IPsec)
//! turns it off for the socket and the group is sent one by one.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Queries read, and answers written, per system call.
pub const BATCH: usize = 32;
/// Largest query accepted; a longer datagram is dropped (MSG_TRUNC).
pub const RECV_BUF: usize = 4096;

// From linux/udp.h; the libc crate has them only for some targets.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// The kernel's UDP_MAX_SEGMENTS is 128 (64 before 5.x): stay under both.
const MAX_SEGMENTS: usize = 64;
/// Longer answers are sent alone: a segment must fit the path MTU (the
/// kernel refuses the whole send otherwise), and 1,200 bytes fits IPv6's
/// minimum MTU of 1,280 with headers.
const MAX_SEGMENT: usize = 1200;
/// A GSO send may not exceed one IP packet's 64 KiB.
const MAX_GSO_BYTES: usize = 60_000;

fn zeroed<T>() -> T {
    // SAFETY: only used for iovec, mmsghdr and sockaddr_storage, plain C
    // structs for which all-zero bytes are a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// Receive side: BATCH buffers, their source addresses and headers.
pub struct Inbox {
    bufs: Vec<[u8; RECV_BUF]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            bufs: vec![[0u8; RECV_BUF]; BATCH],
            addrs: vec![zeroed(); BATCH],
            iovs: vec![zeroed(); BATCH],
            hdrs: vec![zeroed(); BATCH],
            n: 0,
        }
    }
}

impl Inbox {
    /// Block until at least one datagram is queued, then take as many as
    /// are queued (up to BATCH). Returns how many.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: RECV_BUF };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = addr_len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: every header points at buffers owned by self, which
        // outlive the call; BATCH matches the vectors' lengths.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        self.n = 0;
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.n = n as usize;
        Ok(self.n)
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i` of the last batch; None if it was longer than RECV_BUF.
    pub fn msg(&self, i: usize) -> Option<&[u8]> {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        Some(&self.bufs[i][..h.msg_len as usize])
    }

    /// The whole receive buffer of datagram `i` (for hashing ahead).
    pub fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i]
    }

    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        to_socket_addr(&self.addrs[i])
    }

    fn peer_raw(&self, i: usize) -> (&libc::sockaddr_storage, libc::socklen_t) {
        (&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen)
    }
}

/// Send side: up to BATCH answers, each to the peer of one inbox slot.
pub struct Outbox {
    outs: Vec<Vec<u8>>,
    /// Inbox slot (the peer) of each answer.
    slot: Vec<usize>,
    m: usize,
    gso: bool,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One UDP_SEGMENT control message per send, 8-byte aligned.
    cmsgs: Vec<[u64; 4]>,
    /// Answers in send order, and per send its first answer and count.
    order: Vec<usize>,
    sends: Vec<(usize, usize)>,
}

impl Outbox {
    pub fn new(gso: bool) -> Self {
        Self {
            outs: (0..BATCH).map(|_| Vec::with_capacity(RECV_BUF)).collect(),
            slot: vec![0; BATCH],
            m: 0,
            gso,
            iovs: vec![zeroed(); BATCH],
            hdrs: vec![zeroed(); BATCH],
            cmsgs: vec![[0u64; 4]; BATCH],
            order: Vec::with_capacity(BATCH),
            sends: Vec::with_capacity(BATCH),
        }
    }

    /// The buffer for the next answer (cleared by the caller's encoder).
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        &mut self.outs[self.m]
    }

    /// Queue the answer just written into next_buf for inbox slot `slot`.
    pub fn commit(&mut self, slot: usize) {
        self.slot[self.m] = slot;
        self.m += 1;
    }

    pub fn len(&self) -> usize {
        self.m
    }

    pub fn is_empty(&self) -> bool {
        self.m == 0
    }

    /// Send everything queued, grouping where GSO allows, and empty the
    /// box. Returns how many answers left in groups of two or more.
    pub fn flush(&mut self, fd: RawFd, inbox: &Inbox) -> usize {
        let m = std::mem::take(&mut self.m);
        if m == 0 {
            return 0;
        }
        self.group(inbox, m);
        for (s, &(first, count)) in self.sends.iter().enumerate() {
            let (addr, len) = inbox.peer_raw(self.slot[self.order[first]]);
            for k in first..first + count {
                let out = &mut self.outs[self.order[k]];
                self.iovs[k] = libc::iovec { iov_base: out.as_mut_ptr().cast(), iov_len: out.len() };
            }
            let h = &mut self.hdrs[s].msg_hdr;
            // The peer's address as recvmmsg left it in the inbox, which
            // outlives the sends (sendmsg only reads it).
            h.msg_name = (addr as *const libc::sockaddr_storage).cast_mut().cast();
            h.msg_namelen = len;
            h.msg_iov = &mut self.iovs[first];
            h.msg_iovlen = count;
            h.msg_flags = 0;
            if count > 1 {
                let seg = self.outs[self.order[first]].len() as u16;
                set_segment(h, &mut self.cmsgs[s], seg);
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        let n = self.sends.len();
        let mut grouped = 0;
        let mut sent = 0;
        while sent < n {
            // SAFETY: hdrs[sent..n] point at iovecs, answers and control
            // messages owned by self and at peer addresses in `inbox`, all
            // unchanged until the call returns.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if r > 0 {
                grouped +=
                    self.sends[sent..sent + r as usize].iter().map(|&(_, c)| c).filter(|&c| c > 1).sum::<usize>();
                sent += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if self.sends[sent].1 > 1 && gso_refused(&err) {
                // This kernel or route cannot segment: answer this group one
                // datagram at a time, and stop grouping on this socket.
                tracing::warn!(error = %err, "UDP GSO refused; sending answers one by one");
                self.gso = false;
                self.send_singly(fd, sent);
            }
            // Otherwise the peer is gone or unreachable: skip this send.
            sent += 1;
        }
        grouped
    }

    /// Whether answers are still grouped (GSO not refused on this socket).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Send order: answers of equal length to the same peer next to each
    /// other, each run one send (if GSO is on), in first-come order.
    fn group(&mut self, inbox: &Inbox, m: usize) {
        self.order.clear();
        self.sends.clear();
        let mut taken = [false; BATCH];
        for j in 0..m {
            if taken[j] {
                continue;
            }
            let first = self.order.len();
            self.order.push(j);
            taken[j] = true;
            let len = self.outs[j].len();
            if self.gso && len <= MAX_SEGMENT {
                let (addr, alen) = inbox.peer_raw(self.slot[j]);
                let mut bytes = len;
                for (k, t) in taken.iter_mut().enumerate().take(m).skip(j + 1) {
                    if self.order.len() - first >= MAX_SEGMENTS || bytes + len > MAX_GSO_BYTES {
                        break;
                    }
                    if *t || self.outs[k].len() != len {
                        continue;
                    }
                    let (a, l) = inbox.peer_raw(self.slot[k]);
                    if l == alen && same_addr(a, addr, alen) {
                        self.order.push(k);
                        *t = true;
                        bytes += len;
                    }
                }
            }
            self.sends.push((first, self.order.len() - first));
        }
    }

    /// Send the answers of send `s` as separate datagrams.
    fn send_singly(&mut self, fd: RawFd, s: usize) {
        let (first, count) = self.sends[s];
        let h = self.hdrs[s].msg_hdr;
        for k in first..first + count {
            let mut one = h;
            one.msg_iov = &mut self.iovs[k];
            one.msg_iovlen = 1;
            one.msg_control = std::ptr::null_mut();
            one.msg_controllen = 0;
            // SAFETY: `one` points at this answer's iovec (owned by self)
            // and the peer address (in the inbox), both alive for the call.
            unsafe {
                libc::sendmsg(fd, &one, 0);
            }
        }
    }
}

fn set_segment(h: &mut libc::msghdr, buf: &mut [u64; 4], seg: u16) {
    // SAFETY: buf is 32 bytes, 8-aligned, more than CMSG_SPACE(2) (24);
    // CMSG_FIRSTHDR of a header whose control buffer is that long is
    // non-null and points into buf.
    unsafe {
        h.msg_control = buf.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as usize;
        let cm = libc::CMSG_FIRSTHDR(h);
        (*cm).cmsg_level = SOL_UDP;
        (*cm).cmsg_type = UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg);
    }
}

/// Errors by which the kernel says it cannot do GSO for this send (rather
/// than that the peer is unreachable).
fn gso_refused(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP))
}

fn same_addr(a: &libc::sockaddr_storage, b: &libc::sockaddr_storage, len: libc::socklen_t) -> bool {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: both are whole sockaddr_storage values; len is capped to it.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts((a as *const libc::sockaddr_storage).cast::<u8>(), len),
            std::slice::from_raw_parts((b as *const libc::sockaddr_storage).cast::<u8>(), len),
        )
    };
    a == b
}

pub fn to_socket_addr(sa: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match sa.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 = unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 = unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), 0, v6.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn datagram(id: u16, len: usize) -> Vec<u8> {
        let mut d = vec![0xab; len];
        d[..2].copy_from_slice(&id.to_be_bytes());
        d
    }

    /// Every client sends its datagrams before the server reads, so one
    /// recvmmsg takes them all; the server echoes each to its sender.
    /// Returns what each client got back (by client index) and how many
    /// echoes went out grouped.
    fn echo_round(
        server: &UdpSocket,
        outbox: &mut Outbox,
        clients: &[(UdpSocket, Vec<Vec<u8>>)],
    ) -> (Vec<Vec<Vec<u8>>>, usize) {
        let total: usize = clients.iter().map(|(_, d)| d.len()).sum();
        assert!(total <= BATCH);
        let to = server.local_addr().unwrap();
        let longest = clients.iter().map(|(_, d)| d.len()).max().unwrap();
        for k in 0..longest {
            for (c, ds) in clients {
                if let Some(d) = ds.get(k) {
                    c.send_to(d, to).unwrap();
                }
            }
        }
        let mut inbox = Inbox::default();
        let mut got = 0;
        let mut grouped = 0;
        // Loopback queues them all before the first send_to returns, so
        // this is one batch; loop only in case the kernel splits it.
        while got < total {
            let n = inbox.recv(server.as_raw_fd()).unwrap();
            for i in 0..n {
                let msg = inbox.msg(i).unwrap().to_vec();
                let buf = outbox.next_buf();
                buf.clear();
                buf.extend_from_slice(&msg);
                outbox.commit(i);
            }
            got += n;
            grouped += outbox.flush(server.as_raw_fd(), &inbox);
        }
        let mut back = Vec::new();
        for (c, ds) in clients {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut mine = Vec::new();
            let mut buf = [0u8; 4096];
            for _ in 0..ds.len() {
                let (n, from) = c.recv_from(&mut buf).unwrap();
                assert_eq!(from, to);
                mine.push(buf[..n].to_vec());
            }
            // Nothing more: each answer arrived exactly once.
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            assert!(c.recv_from(&mut buf).is_err(), "an extra datagram arrived");
            back.push(mine);
        }
        (back, grouped)
    }

    fn multiset(v: &[Vec<u8>]) -> HashMap<Vec<u8>, usize> {
        let mut m = HashMap::new();
        for d in v {
            *m.entry(d.clone()).or_insert(0) += 1;
        }
        m
    }

    fn check_round(local: &str) {
        let server = UdpSocket::bind(local).unwrap();
        let mut outbox = Outbox::new(true);
        // Two clients; each sends runs of equal length and some odd ones,
        // interleaved with the other's.
        let mut clients = Vec::new();
        for c in 0..2u16 {
            let mut ds = Vec::new();
            for k in 0..10u16 {
                ds.push(datagram(c * 100 + k, if k % 4 == 3 { 77 + k as usize } else { 91 }));
            }
            // One too long to group, one empty-ish.
            ds.push(datagram(c * 100 + 50, 1500));
            ds.push(datagram(c * 100 + 51, 2));
            clients.push((UdpSocket::bind(local).unwrap(), ds));
        }
        let (back, grouped) = echo_round(&server, &mut outbox, &clients);
        for ((_, sent), got) in clients.iter().zip(&back) {
            assert_eq!(multiset(sent), multiset(got), "each datagram back once, whole");
        }
        assert!(grouped >= 4, "equal-length answers to one client went out grouped ({grouped})");
        assert!(outbox.gso());
    }

    #[test]
    fn grouped_answers_arrive_as_separate_datagrams_ipv4() {
        check_round("127.0.0.1:0");
    }

    #[test]
    fn grouped_answers_arrive_as_separate_datagrams_ipv6() {
        if UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        }
        check_round("[::1]:0");
    }

    #[test]
    fn a_socket_that_refuses_gso_still_sends_every_answer() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        // SO_NO_CHECK (no UDP checksum) makes the kernel refuse GSO sends
        // with EINVAL, as a device without checksum offload would.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid fd and an int-sized option value.
        let r = unsafe {
            libc::setsockopt(
                server.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let mut outbox = Outbox::new(true);
        let ds: Vec<Vec<u8>> = (0..12).map(|k| datagram(k, 60)).collect();
        let clients = vec![(UdpSocket::bind("127.0.0.1:0").unwrap(), ds)];
        let (back, grouped) = echo_round(&server, &mut outbox, &clients);
        assert_eq!(multiset(&clients[0].1), multiset(&back[0]));
        assert_eq!(grouped, 0);
        assert!(!outbox.gso(), "GSO turned off after the kernel refused it");
        // And the next round goes out one by one from the start.
        let ds: Vec<Vec<u8>> = (20..25).map(|k| datagram(k, 60)).collect();
        let clients = vec![(UdpSocket::bind("127.0.0.1:0").unwrap(), ds)];
        let (back, _) = echo_round(&server, &mut outbox, &clients);
        assert_eq!(multiset(&clients[0].1), multiset(&back[0]));
    }
}
