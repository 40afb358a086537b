//! The programs of the eBPF object, the hook each one attaches to, and the
//! layout of everything pinned under the pin dir. This is the one module
//! that knows both, so the loader (`load`) and the attacher (`attach`) each
//! depend on it and not on each other.
//!
//! ```text
//! <pin_dir>/maps/<MAP NAME>           every map (ferry_common::map_names)
//! <pin_dir>/progs/<program name>      every program (ferry_common::prog_names)
//! <pin_dir>/links/<ifindex>-<tag>     one tcx link per (interface, program):
//!                                     in/out on pod veths, net-in/net-out on uplinks
//! <pin_dir>/links/cgroup-<tag>        one cgroup link per socket-LB program
//! ```
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{tc::TcAttachType, CgroupSockAddrAttachType, CgroupSockAttachType};
use ferry_common::prog_names;

use crate::{io_err, Result};

/// Where a program attaches; everything that loads, pins or attaches
/// matches on it (the uplink's XDP program will join this list).
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// tcx ingress of an interface (on a pod's host veth: packets leaving the pod).
    TcxIngress,
    /// tcx egress of an interface (on a pod's host veth: packets entering the pod).
    TcxEgress,
    /// A cgroup socket-address hook (the socket LB), on one cgroup.
    Cgroup(CgroupSockAddrAttachType),
    /// A cgroup socket hook (the socket LB's cleanup), on the same cgroup.
    CgroupSock(CgroupSockAttachType),
}

/// The programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prog {
    /// tcx ingress of a pod's host veth (packets leaving the pod).
    FromPod,
    /// tcx egress of a pod's host veth (packets entering the pod).
    ToPod,
    /// tcx ingress of the node's uplink (replies to masqueraded flows).
    FromNet,
    /// tcx egress of the node's uplink (masquerade).
    ToNet,
    /// The socket LB, one per cgroup hook.
    SockConnect4,
    SockConnect6,
    SockSendmsg4,
    SockSendmsg6,
    SockRecvmsg4,
    SockRecvmsg6,
    SockGetpeername4,
    SockGetpeername6,
    SockRelease,
}

impl Prog {
    /// The pod-veth programs, in attach order: reverse NAT first, so that
    /// no flow is translated before its replies can be.
    pub const TC: [Prog; 2] = [Prog::ToPod, Prog::FromPod];
    /// The uplink programs, in attach order: replies are translated back
    /// before any flow is masqueraded.
    pub const UPLINK: [Prog; 2] = [Prog::FromNet, Prog::ToNet];
    /// Every tcx program (pod veths and uplinks).
    pub const TCX: [Prog; 4] = [Prog::ToPod, Prog::FromPod, Prog::FromNet, Prog::ToNet];
    /// The socket LB, in attach order: the reverse hooks first, so no
    /// translated socket ever shows the application a backend's address.
    pub const SOCK: [Prog; 9] = [
        Prog::SockRelease,
        Prog::SockRecvmsg4,
        Prog::SockRecvmsg6,
        Prog::SockGetpeername4,
        Prog::SockGetpeername6,
        Prog::SockConnect4,
        Prog::SockConnect6,
        Prog::SockSendmsg4,
        Prog::SockSendmsg6,
    ];
    /// Every program: `TCX` then `SOCK`.
    pub const ALL: [Prog; Self::TCX.len() + Self::SOCK.len()] = {
        let mut all = [Prog::ToPod; Self::TCX.len() + Self::SOCK.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < Self::TCX.len() { Self::TCX[i] } else { Self::SOCK[i - Self::TCX.len()] };
            i += 1;
        }
        all
    };

    /// The ELF symbol, which is also the pin name.
    pub fn name(self) -> &'static str {
        match self {
            Prog::FromPod => prog_names::FROM_POD,
            Prog::ToPod => prog_names::TO_POD,
            Prog::FromNet => prog_names::FROM_NET,
            Prog::ToNet => prog_names::TO_NET,
            Prog::SockConnect4 => prog_names::SOCK_CONNECT4,
            Prog::SockConnect6 => prog_names::SOCK_CONNECT6,
            Prog::SockSendmsg4 => prog_names::SOCK_SENDMSG4,
            Prog::SockSendmsg6 => prog_names::SOCK_SENDMSG6,
            Prog::SockRecvmsg4 => prog_names::SOCK_RECVMSG4,
            Prog::SockRecvmsg6 => prog_names::SOCK_RECVMSG6,
            Prog::SockGetpeername4 => prog_names::SOCK_GETPEERNAME4,
            Prog::SockGetpeername6 => prog_names::SOCK_GETPEERNAME6,
            Prog::SockRelease => prog_names::SOCK_RELEASE,
        }
    }

    pub fn hook(self) -> Hook {
        use CgroupSockAddrAttachType as C;
        match self {
            Prog::FromPod | Prog::FromNet => Hook::TcxIngress,
            Prog::ToPod | Prog::ToNet => Hook::TcxEgress,
            Prog::SockConnect4 => Hook::Cgroup(C::Connect4),
            Prog::SockConnect6 => Hook::Cgroup(C::Connect6),
            Prog::SockSendmsg4 => Hook::Cgroup(C::UDPSendMsg4),
            Prog::SockSendmsg6 => Hook::Cgroup(C::UDPSendMsg6),
            Prog::SockRecvmsg4 => Hook::Cgroup(C::UDPRecvMsg4),
            Prog::SockRecvmsg6 => Hook::Cgroup(C::UDPRecvMsg6),
            Prog::SockGetpeername4 => Hook::Cgroup(C::GetPeerName4),
            Prog::SockGetpeername6 => Hook::Cgroup(C::GetPeerName6),
            Prog::SockRelease => Hook::CgroupSock(CgroupSockAttachType::SockRelease),
        }
    }

    /// The tc attach point of the tcx programs.
    pub(crate) fn tc_attach_type(self) -> Option<TcAttachType> {
        match self.hook() {
            Hook::TcxIngress => Some(TcAttachType::Ingress),
            Hook::TcxEgress => Some(TcAttachType::Egress),
            Hook::Cgroup(_) | Hook::CgroupSock(_) => None,
        }
    }

    pub fn pin_path(self, pin_dir: &Path) -> PathBuf {
        pin_dir.join("progs").join(self.name())
    }

    /// The tag of this program's link pins (`<ifindex>-<tag>`,
    /// `cgroup-<tag>`).
    fn link_tag(self) -> &'static str {
        match self {
            Prog::FromPod => "in",
            Prog::ToPod => "out",
            Prog::FromNet => "net-in",
            Prog::ToNet => "net-out",
            Prog::SockConnect4 => "connect4",
            Prog::SockConnect6 => "connect6",
            Prog::SockSendmsg4 => "sendmsg4",
            Prog::SockSendmsg6 => "sendmsg6",
            Prog::SockRecvmsg4 => "recvmsg4",
            Prog::SockRecvmsg6 => "recvmsg6",
            Prog::SockGetpeername4 => "getpeername4",
            Prog::SockGetpeername6 => "getpeername6",
            Prog::SockRelease => "release",
        }
    }
}

/// The subdirectories a loader creates.
pub(crate) const PIN_SUBDIRS: [&str; 3] = ["maps", "progs", "links"];

pub(crate) fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The pin of `prog`'s link on interface `ifindex`.
pub(crate) fn link_path(pin_dir: &Path, ifindex: u32, prog: Prog) -> PathBuf {
    links_dir(pin_dir).join(format!("{ifindex}-{}", prog.link_tag()))
}

/// The pin of the socket-LB program `prog`'s cgroup link.
pub(crate) fn cgroup_link_path(pin_dir: &Path, prog: Prog) -> PathBuf {
    links_dir(pin_dir).join(format!("cgroup-{}", prog.link_tag()))
}

/// (ifindex, program) of a tcx link pin's file name; None for anything else.
fn parse_link_pin(name: &str) -> Option<(u32, Prog)> {
    let (idx, tag) = name.split_once('-')?;
    let prog = Prog::TCX.into_iter().find(|p| p.link_tag() == tag)?;
    Some((idx.parse().ok()?, prog))
}

/// Every link pin under `pin_dir`: (ifindex, program, path).
pub fn link_pins(pin_dir: &Path) -> Result<Vec<(u32, Prog, PathBuf)>> {
    let dir = links_dir(pin_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    let mut pins = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read", &dir))?;
        if let Some((ifindex, prog)) = entry.file_name().to_str().and_then(parse_link_pin) {
            pins.push((ifindex, prog, entry.path()));
        }
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_listed_once() {
        for p in Prog::ALL {
            assert_eq!(Prog::ALL.iter().filter(|q| **q == p).count(), 1, "{p:?}");
        }
        assert_eq!(Prog::ALL.len(), 13);
    }

    #[test]
    fn link_pin_names_round_trip() {
        let dir = Path::new("/sys/fs/bpf/ferry");
        for prog in Prog::TCX {
            let path = link_path(dir, 42, prog);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_link_pin(name), Some((42, prog)), "{name}");
        }
        // (file name, parsed)
        let rows = [
            ("7-in", Some((7, Prog::FromPod))),
            ("7-net-out", Some((7, Prog::ToNet))),
            ("7-x", None),
            ("in", None),
            ("x-out", None),
            // a cgroup link is not a tcx link
            ("cgroup-connect4", None),
        ];
        for (name, want) in rows {
            assert_eq!(parse_link_pin(name), want, "{name}");
        }
    }
}
