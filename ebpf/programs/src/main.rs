//! Ferry's programs: tc (tcx) on the host side of every pod veth, tc (tcx)
//! on the node's uplink (masq.rs), and the socket LB's cgroup hooks
//! (sock.rs).
//!
//! Entry points only: each wraps a `try_*` function whose error is a
//! [`DropReason`]; this file is the one place where an error becomes a
//! verdict (count it per CPU, drop the packet).
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map helpers take `impl Borrow<K>`: a reference keeps one copy of a key on the 512-byte BPF stack"
)]

mod conntrack;
mod csum;
mod lb;
mod maps;
mod masq;
mod nat;
mod parse;
mod select;
mod sock;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock, cgroup_sock_addr, classifier},
    programs::{SockAddrContext, SockContext, TcContext},
};
use ferry_common::{DropReason, AF_INET, AF_INET6};

/// tcx ingress of the pod's host veth: packets leaving the pod.
#[classifier]
pub fn ferry_from_pod(ctx: TcContext) -> i32 {
    verdict(lb::try_from_pod(&ctx))
}

/// tcx egress of the pod's host veth: packets entering the pod.
#[classifier]
pub fn ferry_to_pod(ctx: TcContext) -> i32 {
    verdict(nat::try_to_pod(&ctx))
}

/// tcx egress of the node's uplink: masquerade of pod traffic leaving the cluster.
#[classifier]
pub fn ferry_to_net(ctx: TcContext) -> i32 {
    verdict(masq::try_to_net(&ctx))
}

/// tcx ingress of the node's uplink: replies to masqueraded flows, and ICMP
/// errors about them, back to their pods.
#[classifier]
pub fn ferry_from_net(ctx: TcContext) -> i32 {
    verdict(masq::try_from_net(&ctx))
}

/// cgroup connect4: a TCP/UDP/SCTP connect to a frontend goes to a backend.
#[cgroup_sock_addr(connect4)]
pub fn ferry_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::verdict(sock::try_translate(&ctx, AF_INET))
}

#[cgroup_sock_addr(connect6)]
pub fn ferry_sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::verdict(sock::try_translate(&ctx, AF_INET6))
}

/// cgroup sendmsg4: an unconnected UDP datagram to a frontend.
#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::verdict(sock::try_translate(&ctx, AF_INET))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ferry_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::verdict(sock::try_translate(&ctx, AF_INET6))
}

/// cgroup recvmsg4: a datagram from a backend shows the frontend as source.
#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, AF_INET)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn ferry_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, AF_INET6)
}

/// cgroup getpeername4: the peer of a translated socket is the frontend.
#[cgroup_sock_addr(getpeername4)]
pub fn ferry_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, AF_INET)
}

#[cgroup_sock_addr(getpeername6)]
pub fn ferry_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, AF_INET6)
}

/// cgroup sock_release: forgets what the socket LB kept for the socket.
#[cgroup_sock(sock_release)]
pub fn ferry_sock_release(ctx: SockContext) -> i32 {
    sock::release(&ctx)
}

#[inline(always)]
fn verdict(res: Result<i32, DropReason>) -> i32 {
    match res {
        Ok(action) => action,
        Err(reason) => {
            maps::count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// The licence string is not decoration: the verifier refuses a call to a
// helper whose proto is `gpl_only` unless the program's licence is
// GPL-compatible (kernel/bpf/verifier.c, check_helper_call;
// include/linux/license.h lists the accepted strings). from-pod calls
// bpf_fib_lookup, which is GPL-only (net/core/filter.c,
// bpf_skb_fib_lookup_proto); bpf_redirect, bpf_redirect_peer and the csum
// helpers are not. So this object is licensed "Dual MIT/GPL": MIT or
// GPL-2.0, at the recipient's choice (this crate's Cargo.toml says so too).
// ferry-common, compiled into it, is `Apache-2.0 OR MIT` so that its MIT
// option fits; the userspace crates are Apache-2.0 (the workspace's).
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
