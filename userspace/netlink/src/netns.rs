//! Network namespaces: open one by path, enter it on the current thread and
//! come back on Drop.
//!
//! setns(2) with CLONE_NEWNET switches only the calling thread, so the guard
//! is `!Send`: moving it to another thread would "restore" the wrong thread.
//! Sockets remember the namespace they were created in, which is how a
//! netlink connection opened under a guard keeps working after the guard is
//! gone (see [`crate::Netlink::open_in`]).

use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::Error;

/// An open network namespace (a file descriptor of `/proc/<pid>/ns/net` or a
/// bind mount under `/run/netns`). Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path`, checking that it really is a network
    /// namespace (a runtime passing a wrong path must get an error, not a
    /// link moved into some other kind of file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Netns { op: "open", path: path.clone(), source })?;
        let fd: OwnedFd = file.into();
        // NS_GET_NSTYPE would be exact; setns with CLONE_NEWNET on a
        // throw-away check is not possible without switching, so compare the
        // filesystem magic instead: nsfs (0x6e736673).
        let st = nix::sys::statfs::fstatfs(&fd).map_err(|e| Error::Netns {
            op: "statfs",
            path: path.clone(),
            source: e.into(),
        })?;
        if st.filesystem_type().0 as i64 != 0x6e73_6673 {
            return Err(Error::Netns {
                op: "check",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a network namespace (not on nsfs)"),
            });
        }
        Ok(Self { fd, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, Error> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Enters this namespace on the calling thread until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard, Error> {
        NetnsGuard::enter(self)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The calling thread is inside another network namespace while this lives;
/// Drop switches it back.
#[derive(Debug)]
pub struct NetnsGuard {
    previous: Netns,
    // setns applies to one thread: the guard must stay on it.
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    pub fn enter(target: &Netns) -> Result<Self, Error> {
        let previous = Netns::current()?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
            op: "setns",
            path: target.path.clone(),
            source: e.into(),
        })?;
        Ok(Self { previous, _not_send: PhantomData })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to return would leave this thread in the wrong namespace
        // and every later netlink or socket call on it would act there:
        // there is no safe way to continue.
        if let Err(e) = setns(self.previous.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("ferry-netlink: cannot restore network namespace: {e}");
            std::process::abort();
        }
    }
}
