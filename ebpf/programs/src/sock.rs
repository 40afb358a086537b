//! The socket load balancer: cgroup `connect4/6` and `sendmsg4/6` point a
//! socket that names a Service frontend at a backend before the kernel
//! routes anything, so the flow needs no per-packet NAT at all (and host
//! processes, which have no pod veth, reach ClusterIPs). `recvmsg4/6` and
//! `getpeername4/6` show the application the frontend it asked for, from
//! `FERRY_SOCK_REVNAT`. This is Cilium's "socket LB" (bpf/bpf_sock.c) in
//! the shape of our packet path: the same Service map, the same
//! [`select::select_backend`].
//!
//! Verdicts: 1 lets the call proceed (translated or not), 0 refuses it;
//! with `bpf_set_retval(-ECONNREFUSED)` the application sees
//! ECONNREFUSED, as for a TCP RST (Linux >= 5.18 for set_retval).
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};
use ferry_common::{
    DropReason, GlobalCounter, ServiceKey, SockRevKey, SockRevValue, AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::{
    conntrack::{backend_usable, now_ns},
    maps::{count_global, FERRY_CONFIG, FERRY_SERVICES, FERRY_SOCK_REVNAT},
    select::{self, fmix, Flow},
};

pub const ALLOW: i32 = 1;
pub const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// A socket's new flow. Every connect is a new socket (a new cookie), so
/// the cookie spreads connections as the 5-tuple does on the packet path;
/// an unconnected UDP socket keeps its backend per frontend.
struct SockFlow {
    family: u8,
    /// The client for `sessionAffinity: ClientIP`: the socket's network
    /// namespace (one per pod, one for the node), as its address is not
    /// chosen yet at connect time.
    netns: u64,
    cookie: u64,
}

impl Flow for SockFlow {
    fn family(&self) -> u8 {
        self.family
    }

    fn client(&self) -> [u32; 4] {
        [self.netns as u32, (self.netns >> 32) as u32, 0, 0]
    }

    fn hash(&self) -> u32 {
        fmix(self.cookie as u32 ^ fmix((self.cookie >> 32) as u32))
    }
}

/// The destination the application passed (address in wire order).
#[inline(always)]
fn user_addr(ctx: &SockAddrContext, family: u8) -> [u32; 4] {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the whole run; the verifier
    // allows 4-byte reads of these fields.
    unsafe {
        if family == AF_INET {
            [(*sa).user_ip4, 0, 0, 0]
        } else {
            [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]]
        }
    }
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, family: u8, addr: &[u32; 4], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as above; user_ip4/user_ip6/user_port are writable for these
    // hooks, as 4-byte stores (the port in the low 16 bits, wire order).
    unsafe {
        if family == AF_INET {
            (*sa).user_ip4 = addr[0];
        } else {
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
        }
        (*sa).user_port = port as u32;
    }
}

/// The socket's L4 protocol, if one the Service map can hold.
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: context field read.
    let p = unsafe { (*ctx.sock_addr).protocol };
    match p as u8 {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP if p < 256 => Some(p as u8),
        _ => None,
    }
}

/// Whether this socket's namespace is served (see `Config::sock_netns_cookie`).
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> Option<u64> {
    // SAFETY: helper call with this program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let want = FERRY_CONFIG.get(0).map_or(0, |c| c.sock_netns_cookie);
    (want == 0 || want == netns).then_some(netns)
}

/// connect4/6, sendmsg4/6: a frontend becomes one of its backends.
#[inline(always)]
pub fn try_translate(ctx: &SockAddrContext, family: u8) -> Result<i32, DropReason> {
    let Some(proto) = protocol(ctx) else {
        return Ok(ALLOW);
    };
    let Some(netns) = in_scope(ctx) else {
        return Ok(ALLOW);
    };
    let addr = user_addr(ctx, family);
    // SAFETY: context field read.
    let port = unsafe { (*ctx.sock_addr).user_port } as u16;
    let key = ServiceKey { addr, port, proto, family };
    let Some(svc) = FERRY_SERVICES.get_ptr(&key) else {
        return Ok(ALLOW);
    };
    // SAFETY: map value pointer, copied once.
    let svc = unsafe { *svc };
    if svc.backend_count == 0 {
        count_global(GlobalCounter::SockRefused);
        return Err(DropReason::NoEndpoints);
    }
    // SAFETY: helper call with this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let flow = SockFlow { family, netns, cookie };
    let id = select::select_backend(&flow, &svc, now_ns())?;
    let b = backend_usable(id, svc.id).ok_or(DropReason::NoBackend)?;
    let rkey = SockRevKey { cookie, addr: b.addr, port: b.port, family, _pad: 0, _pad2: 0 };
    let rval = SockRevValue { vip: addr, vip_port: port, _pad: 0, service_id: svc.id };
    // Without the entry the application would see the backend's address in
    // recvmsg/getpeername: refuse rather than connect half-translated.
    FERRY_SOCK_REVNAT.insert(&rkey, &rval, 0).map_err(|_| DropReason::CtFull)?;
    set_user_addr(ctx, family, &b.addr, b.port);
    count_global(GlobalCounter::SockTranslated);
    Ok(ALLOW)
}

/// recvmsg4/6 (the datagram's source) and getpeername4/6 (the peer): a
/// backend this socket was pointed at shows as the frontend.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, family: u8) -> i32 {
    let addr = user_addr(ctx, family);
    // SAFETY: context field read, and helper call with this context.
    let (port, cookie) = unsafe { ((*ctx.sock_addr).user_port as u16, bpf_get_socket_cookie(ctx.as_ptr())) };
    let rkey = SockRevKey { cookie, addr, port, family, _pad: 0, _pad2: 0 };
    if let Some(v) = FERRY_SOCK_REVNAT.get_ptr(&rkey) {
        // SAFETY: map value pointer, copied once.
        let v = unsafe { *v };
        set_user_addr(ctx, family, &v.vip, v.vip_port);
    }
    ALLOW
}

/// cgroup sock_release: a connected socket's entry goes with it, so the
/// map holds live sockets only. Measured: with entries left to age out,
/// every connect() evicted one from the full LRU map and the connection
/// rate through a VIP fell to 0.94-0.98x direct; without the entry (a
/// test build) it was 1.0x. Unconnected UDP sockets' other entries (one
/// per backend they sent to) are left to the LRU.
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: context field reads (all of bpf_sock is readable here).
    let (family, proto) = unsafe { ((*sk).family, (*sk).protocol) };
    if proto != IPPROTO_TCP as u32 && proto != IPPROTO_UDP as u32 && proto != IPPROTO_SCTP as u32 {
        return ALLOW;
    }
    // Every field is read, at its constant offset, before any branch on
    // the family: the verifier refuses a load through a context pointer
    // the compiler moved (two offsets merged into one pointer).
    // SAFETY: context field reads.
    let (ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).dst_ip4),
            [
                core::ptr::read_volatile(&(*sk).dst_ip6[0]),
                core::ptr::read_volatile(&(*sk).dst_ip6[1]),
                core::ptr::read_volatile(&(*sk).dst_ip6[2]),
                core::ptr::read_volatile(&(*sk).dst_ip6[3]),
            ],
        )
    };
    // Kernel address families (AF_INET 2, AF_INET6 10).
    let (family, addr) = match family {
        2 => (AF_INET, [ip4, 0, 0, 0]),
        10 => (AF_INET6, ip6),
        _ => return ALLOW,
    };
    // SAFETY: context field read (network byte order, as in the key).
    let port = unsafe { (*sk).dst_port };
    // SAFETY: helper call with this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = FERRY_SOCK_REVNAT.remove(&SockRevKey { cookie, addr, port, family, _pad: 0, _pad2: 0 });
    ALLOW
}

/// The one place a socket-hook error becomes a verdict: counted, and the
/// call refused with ECONNREFUSED (a frontend cannot be reached).
#[inline(always)]
pub fn verdict(res: Result<i32, DropReason>) -> i32 {
    match res {
        Ok(v) => v,
        Err(reason) => {
            crate::maps::count_drop(reason);
            // SAFETY: plain helper call; the hook returns -retval to the
            // caller when the program refuses.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
    }
}
