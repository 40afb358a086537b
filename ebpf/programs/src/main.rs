//! Ferry's tc programs, attached (tcx) to the host side of every pod veth.
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
mod nat;
mod parse;
mod select;

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use ferry_common::DropReason;

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
