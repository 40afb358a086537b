//! The on-disk allocation store, in host-local's layout so that either
//! plugin can read the other's state:
//!
//! ```text
//! <dataDir>/<network>/lock                 flock(2) held for every read-modify-write
//! <dataDir>/<network>/<ip>                 "<container id>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.<n> last address handed out from range set n
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a
//! plugin killed at any instant leaves either no reservation or a complete
//! one. Temporaries are only ever written under the lock, so any found by a
//! later lock holder belong to a dead writer and are removed. (No fsync: the
//! guarantee is against a killed process; after a power loss every pod
//! netns is gone too, and GC reconciles the files.)

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{CniError, Code, Result};

const TMP_PREFIX: &str = ".tmp.";
const LAST_PREFIX: &str = "last_reserved_ip.";

fn io_err(op: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::new(Code::Io, format!("ipam: {op} {}", path.display())).with_details(e)
}

/// One reservation as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// The store of one network, locked for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Creates the directory if needed and takes the exclusive lock
    /// (blocking: holders keep it for a few file operations only).
    pub fn lock(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("lock", &lock_path, std::io::Error::last_os_error()));
        }
        let store = Store { dir, _lock: lock };
        store.remove_stale_temporaries()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn remove_stale_temporaries(&self) -> Result<()> {
        for e in fs::read_dir(&self.dir).map_err(|e| io_err("read", &self.dir, e))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn write_atomic(&self, name: &str, content: &str) -> Result<()> {
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
        let dst = self.dir.join(name);
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(content.as_bytes()).map_err(|e| io_err("write", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(|e| io_err("rename into", &dst, e))
    }

    /// Every reserved address (file names only: no file is read).
    pub fn taken(&self) -> Result<HashSet<IpAddr>> {
        Ok(fs::read_dir(&self.dir)
            .map_err(|e| io_err("read", &self.dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect())
    }

    /// Every reservation with its owner.
    pub fn reservations(&self) -> Result<Vec<Reservation>> {
        let mut out = vec![];
        for ip in self.taken()? {
            let path = self.dir.join(ip.to_string());
            let Ok(text) = fs::read_to_string(&path) else { continue };
            let mut lines = text.lines().map(str::trim);
            out.push(Reservation {
                ip,
                container_id: lines.next().unwrap_or("").to_string(),
                ifname: lines.next().unwrap_or("").to_string(),
            });
        }
        Ok(out)
    }

    /// Records `ip` as owned by (container, ifname). The caller checked it
    /// is free while holding this lock.
    pub fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<()> {
        self.write_atomic(&ip.to_string(), &format!("{}\r\n{ifname}", container_id.trim()))
    }

    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path, e)),
        }
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_PREFIX}{set}"))).ok().and_then(|s| s.trim().parse().ok())
    }

    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        self.write_atomic(&format!("{LAST_PREFIX}{set}"), &ip.to_string())
    }

    /// Releases what (container, ifname) holds. Files written by old
    /// host-local versions hold only the container id; they match any ifname.
    pub fn release_owner(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut released = vec![];
        for r in self.reservations()? {
            if r.container_id == container_id && (r.ifname.is_empty() || r.ifname == ifname) {
                self.release(r.ip)?;
                released.push(r.ip);
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_release_and_owner_lookup() {
        let d = std::env::temp_dir().join(format!("ferry-store-test-{}", std::process::id()));
        let s = Store::lock(&d, "net").unwrap();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "fd00::2".parse().unwrap();
        s.reserve(a, "c1", "eth0").unwrap();
        s.reserve(b, "c1", "eth0").unwrap();
        s.set_last_reserved(0, a).unwrap();
        assert_eq!(fs::read_to_string(d.join("net/10.0.0.2")).unwrap(), "c1\r\neth0");
        assert_eq!(s.taken().unwrap().len(), 2);
        assert_eq!(s.last_reserved(0), Some(a));
        // a stale temporary from a killed writer is swept by the next holder
        fs::write(d.join("net/.tmp.999999"), "junk").unwrap();
        drop(s);
        let s = Store::lock(&d, "net").unwrap();
        assert!(!d.join("net/.tmp.999999").exists());
        assert!(s.release_owner("c1", "eth1").unwrap().is_empty());
        let mut rel = s.release_owner("c1", "eth0").unwrap();
        rel.sort();
        assert_eq!(rel, vec![a, b]);
        assert!(s.taken().unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
