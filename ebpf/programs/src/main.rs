//! Ferry's tc programs, attached (tcx) to the host side of every pod veth.
//!
//! Entry points only: each wraps a `try_*` function whose error is a
//! [`DropReason`]; this file is the one place where an error becomes a
//! verdict (count it per CPU, drop the packet).
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod lb;
mod maps;
mod nat;
mod parse;

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

// bpf_redirect and the csum helpers are not GPL-only, but the kernel's tc
// helpers print more useful verifier logs for GPL-compatible programs.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
