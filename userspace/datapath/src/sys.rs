//! The few bpf(2) bits aya 0.14 does not expose: opening a pinned object
//! and reading a tcx link's interface from its fdinfo.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// BPF_OBJ_GET: an fd for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    // SAFETY: attr outlives the call and is sized as passed; the returned fd
    // (if any) is owned by us.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGetAttr, std::mem::size_of::<ObjGetAttr>() as u32)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface index a pinned tcx link is attached to: 0 once its
/// interface is gone (the kernel detaches the link but the pin stays).
pub fn link_ifindex(path: &Path) -> io::Result<u32> {
    let fd = obj_get(path)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("ifindex:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a tcx link"))
}

const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// BPF_LINK_UPDATE: the pinned link at `path` runs `prog` from now on,
/// atomically (aya 0.14 has this for tcx links only).
pub fn link_update(path: &Path, prog: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let link = obj_get(path)?;
    let attr =
        LinkUpdateAttr { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, ..Default::default() };
    // SAFETY: attr outlives the call and is sized as passed; both fds are
    // open for its duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &attr as *const LinkUpdateAttr,
            std::mem::size_of::<LinkUpdateAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cgroup id a pinned cgroup link is attached to (its fdinfo), 0 once
/// the cgroup is gone.
pub fn link_cgroup_id(path: &Path) -> io::Result<u64> {
    let fd = obj_get(path)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("cgroup_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a cgroup link"))
}

/// The calling thread's network namespace cookie (`SO_NETNS_COOKIE`, the
/// value `bpf_get_netns_cookie` returns for sockets of that namespace).
pub fn netns_cookie() -> io::Result<u64> {
    // An unbound socket: binding needs an address, and a fresh namespace's
    // loopback may be down.
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Where bpffs is mounted on every distribution that mounts it.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Make sure `pin_dir` can hold pins: it must be on bpffs. A pin dir under
/// /sys/fs/bpf whose bpffs is not mounted (a node without systemd's mount
/// unit) gets it mounted there; one elsewhere not on bpffs is an error, as
/// mounting over an arbitrary directory is not this program's call.
/// Returns whether it mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> io::Result<bool> {
    let on_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p).map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC).unwrap_or(false)
    };
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if on_bpffs(existing) {
        return Ok(false);
    }
    let root = Path::new(BPFFS_ROOT);
    if !pin_dir.starts_with(root) {
        return Err(io::Error::other(format!(
            "{} is not on a bpffs mount: mount one (mount -t bpf bpffs DIR) or use a pin dir under {BPFFS_ROOT}",
            pin_dir.display()
        )));
    }
    std::fs::create_dir_all(root)?;
    nix::mount::mount(Some("bpffs"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| io::Error::other(format!("mounting bpffs at {BPFFS_ROOT}: {e}")))?;
    Ok(true)
}
