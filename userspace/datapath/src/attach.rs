//! Attaching the pinned programs to host veths (tcx), with pinned links so
//! the attachment outlives the attaching process (CNI plugin, agent).
use std::{
    fs, io,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{
    links::FdLink, tc::TcAttachOptions, CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, ProgramError,
    SchedClassifier,
};
use tracing::debug;

use crate::{
    io_err,
    prog::{cgroup_link_path, link_path, link_pins, Hook, Prog},
    sys, Error, Result,
};

/// An interface of the calling thread's network namespace.
#[derive(Clone, Copy, Debug)]
pub enum Iface<'a> {
    Name(&'a str),
    Index(u32),
}

impl<'a> From<&'a str> for Iface<'a> {
    fn from(name: &'a str) -> Self {
        Iface::Name(name)
    }
}

impl From<u32> for Iface<'_> {
    fn from(index: u32) -> Self {
        Iface::Index(index)
    }
}

impl Iface<'_> {
    /// (name, ifindex) in the calling thread's namespace.
    fn resolve(self) -> Result<(String, u32)> {
        match self {
            Iface::Name(name) => nix::net::if_::if_nametoindex(name)
                .map(|i| (name.to_owned(), i))
                .map_err(|source| Error::Interface { iface: name.to_owned(), source }),
            Iface::Index(i) => nix::net::if_::if_indextoname(i)
                .map(|n| (n.to_string_lossy().into_owned(), i))
                .map_err(|source| Error::Interface { iface: format!("#{i}"), source }),
        }
    }
}

/// The outcome of [`attach`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub ifindex: u32,
    /// False when both programs were already attached (nothing changed).
    pub created: bool,
}

/// Attaches to-pod (tcx egress) then from-pod (tcx ingress) to `iface` and
/// pins both links under `<pin_dir>/links/<ifindex>-{out,in}`. Idempotent:
/// a live pinned link is kept; a stale pin (its interface is gone and the
/// index was reused) is replaced. Reverse NAT goes first so that no flow is
/// translated before its replies can be.
pub fn attach<'a>(pin_dir: &Path, iface: impl Into<Iface<'a>>) -> Result<Attachment> {
    attach_progs(pin_dir, iface.into(), &Prog::TC)
}

/// Attaches from-net (tcx ingress) then to-net (tcx egress) to the node's
/// uplink and pins the links under `<pin_dir>/links/<ifindex>-net-{in,out}`;
/// idempotent as [`attach`]. The programs act only on an uplink with a
/// `FERRY_MASQ_IFACES` entry; everything else passes.
pub fn attach_uplink<'a>(pin_dir: &Path, iface: impl Into<Iface<'a>>) -> Result<Attachment> {
    attach_progs(pin_dir, iface.into(), &Prog::UPLINK)
}

fn attach_progs(pin_dir: &Path, iface: Iface<'_>, progs: &[Prog]) -> Result<Attachment> {
    let (ifname, ifindex) = iface.resolve()?;
    let mut created = false;
    for &prog in progs {
        let path = link_path(pin_dir, ifindex, prog);
        if path.exists() {
            if matches!(sys::link_ifindex(&path), Ok(i) if i == ifindex) {
                continue;
            }
            fs::remove_file(&path).map_err(io_err("remove stale link pin", &path))?;
        }
        let prog_path = prog.pin_path(pin_dir);
        if !prog_path.exists() {
            return Err(Error::NotLoaded(prog_path));
        }
        let mut program = SchedClassifier::from_pin(&prog_path)
            .map_err(|source| Error::Program { name: prog.name().to_owned(), source })?;
        let program_err = |source| Error::Program { name: prog.name().to_owned(), source };
        let id = match program.attach_with_options(
            &ifname,
            prog.tc_attach_type().ok_or_else(|| Error::Config(format!("{} is not a tcx program", prog.name())))?,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(id) => id,
            // tcx refuses a program already on the hook (EEXIST): the other
            // party (CNI plugin or the agent's watcher) attached this very
            // program a moment ago and is about to pin its link. Theirs is
            // ours; adopt it once its pin shows up.
            Err(ProgramError::SyscallError(e))
                if e.io_error.kind() == io::ErrorKind::AlreadyExists && wait_for_pin(&path, ifindex) =>
            {
                debug!(ifname, ?prog, "attached concurrently by another party");
                continue;
            }
            Err(source) => return Err(program_err(source)),
        };
        let link = program.take_link(id).map_err(program_err)?;
        let link = FdLink::try_from(link).map_err(|source| Error::Link { path: path.clone(), source })?;
        match link.pin(&path) {
            Ok(_pinned) => created = true,
            // Someone (the CNI plugin or the agent's watcher) attached at the
            // same moment and pinned first: our unpinned link is detached as
            // its fd closes here, theirs stays.
            Err(aya::pin::PinError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::AlreadyExists => {
                debug!(ifname, ?prog, "already attached concurrently");
            }
            Err(source) => return Err(Error::Pin { path, source }),
        }
    }
    Ok(Attachment { ifname, ifindex, created })
}

/// Whether a live link pin for `ifindex` appears at `path` within a
/// second (the other attacher pins right after attaching).
fn wait_for_pin(path: &Path, ifindex: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if matches!(sys::link_ifindex(path), Ok(i) if i == ifindex) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Detaches both programs from interface `ifindex` by removing the link
/// pins (the pins are the links' only owners). Returns whether any existed.
pub fn detach(pin_dir: &Path, ifindex: u32) -> Result<bool> {
    detach_progs(pin_dir, ifindex, &Prog::TC)
}

/// Detaches the uplink programs from interface `ifindex`.
pub fn detach_uplink(pin_dir: &Path, ifindex: u32) -> Result<bool> {
    detach_progs(pin_dir, ifindex, &Prog::UPLINK)
}

fn detach_progs(pin_dir: &Path, ifindex: u32, progs: &[Prog]) -> Result<bool> {
    let mut any = false;
    for &prog in progs {
        let path = link_path(pin_dir, ifindex, prog);
        match fs::remove_file(&path) {
            Ok(()) => any = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove link pin", path)(e)),
        }
    }
    Ok(any)
}

/// Attaches the socket LB (cgroup connect, sendmsg, recvmsg and getpeername,
/// IPv4 and IPv6) to the cgroup v2 directory `cgroup`, for every process in
/// it and its descendants, and pins the links under
/// `<pin_dir>/links/cgroup-<hook>` so they outlive the agent. Idempotent: a
/// pinned link on this cgroup is kept (a load replaces its program in
/// place); one on another cgroup is detached first. Links are multi-attach,
/// so other programs on the cgroup (systemd's, another tool's) keep running.
/// Returns how many links were created.
pub fn attach_cgroup(pin_dir: &Path, cgroup: &Path) -> Result<usize> {
    let dir = fs::File::open(cgroup).map_err(io_err("open cgroup", cgroup))?;
    let id = std::os::unix::fs::MetadataExt::ino(&dir.metadata().map_err(io_err("stat cgroup", cgroup))?);
    let mut created = 0;
    for prog in Prog::SOCK {
        let path = cgroup_link_path(pin_dir, prog);
        if path.exists() {
            if matches!(sys::link_cgroup_id(&path), Ok(i) if i == id) {
                continue;
            }
            fs::remove_file(&path).map_err(io_err("remove link pin of another cgroup", &path))?;
        }
        let prog_path = prog.pin_path(pin_dir);
        if !prog_path.exists() {
            return Err(Error::NotLoaded(prog_path));
        }
        let program_err = |source| Error::Program { name: prog.name().to_owned(), source };
        let link_err = |source| Error::Link { path: path.clone(), source };
        // A bpf_link on a cgroup is always multi-attach; the kernel refuses
        // any flag with it (kernel/bpf/cgroup.c, cgroup_bpf_link_attach), so
        // the mode must be the flagless one.
        let mode = CgroupAttachMode::Single;
        let link: FdLink = match prog.hook() {
            Hook::Cgroup(attach_type) => {
                let mut program = CgroupSockAddr::from_pin(&prog_path, attach_type).map_err(program_err)?;
                let id = program.attach(&dir, mode).map_err(program_err)?;
                program.take_link(id).map_err(program_err)?.try_into().map_err(link_err)?
            }
            Hook::CgroupSock(attach_type) => {
                let mut program = CgroupSock::from_pin(&prog_path, attach_type).map_err(program_err)?;
                let id = program.attach(&dir, mode).map_err(program_err)?;
                program.take_link(id).map_err(program_err)?.try_into().map_err(link_err)?
            }
            Hook::TcxIngress | Hook::TcxEgress => unreachable!("Prog::SOCK are cgroup programs"),
        };
        link.pin(&path).map_err(|source| Error::Pin { path: path.clone(), source })?;
        created += 1;
    }
    debug!(cgroup = %cgroup.display(), created, "socket LB attached");
    Ok(created)
}

/// Detaches the socket LB from its cgroup (removes the link pins, the
/// links' only owners). Returns whether any was attached.
pub fn detach_cgroup(pin_dir: &Path) -> Result<bool> {
    let mut any = false;
    for prog in Prog::SOCK {
        let path = cgroup_link_path(pin_dir, prog);
        match fs::remove_file(&path) {
            Ok(()) => any = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove link pin", path)(e)),
        }
    }
    Ok(any)
}

/// Removes link pins whose interface no longer exists (or whose link the
/// kernel already detached). Returns the interface indexes cleaned up.
pub fn gc_links(pin_dir: &Path) -> Result<Vec<u32>> {
    let mut removed = Vec::new();
    for (ifindex, _, path) in link_pins(pin_dir)? {
        let live = matches!(sys::link_ifindex(&path), Ok(i) if i == ifindex);
        if !live {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove link pin", path)(e)),
            }
            if !removed.contains(&ifindex) {
                removed.push(ifindex);
            }
        }
    }
    Ok(removed)
}

/// Which interfaces count as pod veths: comma-separated globs where `*`
/// matches any run of characters and `?` one character; a glob starting with
/// `!` excludes. A name matches when some plain glob matches and no
/// exclusion does, e.g. `fer*,!ferry*` (pod veths, not the bridge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfacePattern {
    globs: Vec<String>,
    excludes: Vec<String>,
}

impl IfacePattern {
    pub fn new(pattern: &str) -> Result<Self> {
        let (mut globs, mut excludes) = (Vec::new(), Vec::new());
        for g in pattern.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            match g.strip_prefix('!') {
                Some(ex) => excludes.push(ex.to_owned()),
                None => globs.push(g.to_owned()),
            }
        }
        if globs.is_empty() {
            return Err(Error::Config(format!("interface pattern {pattern:?} matches nothing (no plain glob)")));
        }
        Ok(Self { globs, excludes })
    }

    pub fn matches(&self, name: &str) -> bool {
        let m = |g: &String| glob_match(g.as_bytes(), name.as_bytes());
        self.globs.iter().any(m) && !self.excludes.iter().any(m)
    }
}

fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob_match(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob_match(rest, &s[1..]),
    }
}

/// What [`attach_matching`] did: the attachments, and the interfaces that
/// failed with why.
pub type Attached = (Vec<Attachment>, Vec<(String, Error)>);

/// Attaches to every existing interface of the calling thread's namespace
/// whose name matches `pattern`.
pub fn attach_matching(pin_dir: &Path, pattern: &IfacePattern) -> Result<Attached> {
    let ifaces = nix::net::if_::if_nameindex().map_err(|source| Error::Interface { iface: "*".to_owned(), source })?;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for iface in ifaces.iter() {
        let name = iface.name().to_string_lossy().into_owned();
        if !pattern.matches(&name) {
            continue;
        }
        match attach(pin_dir, Iface::Index(iface.index())) {
            Ok(a) => ok.push(a),
            Err(e) => failed.push((name, e)),
        }
    }
    Ok((ok, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = IfacePattern::new("veth*, fy*x, fer*, !ferry*, ?x?").unwrap();
        // (name, matches)
        for (name, want) in [
            ("veth1234", true),
            ("veth", true),
            ("eth0", false),
            ("fyx", true),
            ("fy12x", true),
            ("fy12", false),
            ("fer0123456789ab", true),
            ("ferry0", false), // excluded: the bridge
            ("axb", true),
            ("ax", false),
        ] {
            assert_eq!(p.matches(name), want, "{name}");
        }
        assert!(IfacePattern::new(" , ").is_err());
        assert!(IfacePattern::new("!ferry*").is_err(), "only exclusions");
    }
}
