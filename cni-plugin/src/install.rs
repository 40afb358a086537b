//! `ferry install-cni`: puts this very executable into the host's CNI binary
//! directory, the way the kubelet must find it — whole or not at all.
//!
//! The copy goes to `DIR/.ferry.tmp-<pid>` (created exclusively, written,
//! fsynced, mode 0755) and is renamed over `DIR/ferry`; rename(2) replaces
//! the name atomically, so a runtime starting `ferry` at that moment runs
//! either the old inode or the new one, never a half-written file (and a
//! running old `ferry` keeps its inode: no ETXTBSY). The directory is fsynced
//! afterwards so the new name survives a crash. A destination that already
//! holds the same bytes with mode 0755 is left alone (a restarted DaemonSet
//! pod then changes nothing on the host).

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where the DaemonSet's init container mounts the host's `/opt/cni/bin`.
pub const DEFAULT_DIR: &str = "/host/opt/cni/bin";
/// The plugin's name in that directory (the conflist's `"type": "ferry"`).
pub const NAME: &str = "ferry";
/// Temporary files of this name are ours; a crashed run's are removed once
/// they are older than [`STALE_AFTER`].
const TMP_PREFIX: &str = ".ferry.tmp-";
const STALE_AFTER: Duration = Duration::from_secs(600);
const MODE: u32 = 0o755;

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// There was no `DIR/ferry`.
    Installed,
    /// `DIR/ferry` had other bytes (or another mode) and was replaced.
    Replaced,
    /// `DIR/ferry` was already this binary: nothing written.
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Replaced => "replaced",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// A failed step: what was being done, to which path, and why.
#[derive(Debug)]
pub struct InstallError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError { op, path, source }
}

/// Copies `src` (the running executable: `/proc/self/exe`) to `dir/ferry`
/// atomically, creating `dir` if needed. Returns the destination and what
/// was done.
pub fn install(src: &Path, dir: &Path) -> Result<(PathBuf, Outcome), InstallError> {
    let dest = dir.join(NAME);
    fs::create_dir_all(dir).map_err(err("creating", dir))?;
    remove_stale_temporaries(dir);
    let outcome = match fs::symlink_metadata(&dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Installed,
        Err(e) => return Err(err("inspecting", &dest)(e)),
        Ok(meta) => {
            let same_mode = meta.file_type().is_file() && meta.permissions().mode() & 0o7777 == MODE;
            if same_mode && same_contents(src, &dest)? {
                return Ok((dest, Outcome::Unchanged));
            }
            Outcome::Replaced
        }
    };
    let tmp = dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
    if let Err(e) = write_temporary(src, &tmp).and_then(|()| fs::rename(&tmp, &dest).map_err(err("renaming", &tmp))) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is in the directory: fsync it so the new entry is durable.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err("syncing", dir))?;
    Ok((dest, outcome))
}

/// The whole copy, written and fsynced, mode 0755 whatever the umask.
fn write_temporary(src: &Path, tmp: &Path) -> Result<(), InstallError> {
    // A leftover of a run with our pid (a restarted container reuses pids).
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err("removing", tmp)(e)),
        _ => {}
    }
    let mut input = File::open(src).map_err(err("opening", src))?;
    let mut out = OpenOptions::new().write(true).create_new(true).mode(MODE).open(tmp).map_err(err("creating", tmp))?;
    io::copy(&mut input, &mut out).map_err(err("writing", tmp))?;
    out.set_permissions(fs::Permissions::from_mode(MODE)).map_err(err("setting the mode of", tmp))?;
    out.sync_all().map_err(err("syncing", tmp))?;
    Ok(())
}

/// Whether two files have the same bytes (read in step, so a large
/// difference costs no more than the shorter prefix).
fn same_contents(a: &Path, b: &Path) -> Result<bool, InstallError> {
    let mut fa = File::open(a).map_err(err("opening", a))?;
    let mut fb = File::open(b).map_err(err("opening", b))?;
    let (ma, mb) = (fa.metadata().map_err(err("inspecting", a))?, fb.metadata().map_err(err("inspecting", b))?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(err("reading", a))?;
        let m = read_full(&mut fb, &mut bb).map_err(err("reading", b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Removes `.ferry.tmp-*` files a killed earlier run left behind. Only old
/// ones: pids say nothing across containers, and a concurrent installer's
/// fresh temporary must not vanish under it. Failures are ignored (the
/// install itself does not depend on them).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_AFTER));
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// What argv asks of the binary. The kubelet runs a CNI plugin with no
/// arguments and the operation in `CNI_COMMAND` (SPEC.md "Parameters"), so
/// only these exact first arguments are taken as a request; anything else
/// is the CNI protocol, as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Cni,
    Version,
    Help,
    InstallCni { dir: PathBuf },
}

/// Parses argv (without the program name). Paths are taken as given (no
/// UTF-8 needed); the words around them must match exactly.
pub fn parse_args<S: AsRef<OsStr>>(args: &[S]) -> Result<Invocation, String> {
    let Some(first) = args.first().map(|a| a.as_ref().to_str()) else { return Ok(Invocation::Cni) };
    let rest = &args[1..];
    let no_more = |what: Invocation| match rest.first() {
        Some(extra) => Err(format!("unexpected argument {:?}", extra.as_ref())),
        None => Ok(what),
    };
    match first {
        Some("--version" | "-V" | "version") => no_more(Invocation::Version),
        Some("--help" | "-h" | "help") => no_more(Invocation::Help),
        Some("install-cni") => {
            let mut dir = PathBuf::from(DEFAULT_DIR);
            let mut it = rest.iter().map(AsRef::as_ref);
            while let Some(a) = it.next() {
                if let Some(v) = a.as_bytes().strip_prefix(b"--dir=") {
                    dir = PathBuf::from(OsStr::from_bytes(v));
                } else if a == "--dir" {
                    dir = PathBuf::from(it.next().ok_or("--dir needs a directory")?);
                } else {
                    return Err(format!(
                        "install-cni: unexpected argument {a:?} (usage: ferry install-cni [--dir DIR])"
                    ));
                }
            }
            if dir.as_os_str().is_empty() {
                return Err("--dir needs a directory".into());
            }
            Ok(Invocation::InstallCni { dir })
        }
        _ => Ok(Invocation::Cni),
    }
}

/// The text of `ferry --help`.
pub fn usage() -> String {
    format!(
        "ferry {}: the Ferry CNI plugin\n\n\
         Run by the container runtime with CNI_COMMAND (ADD, DEL, CHECK, STATUS, GC, VERSION) in the\n\
         environment and the network configuration on stdin.\n\n\
         Usage:\n  \
         ferry install-cni [--dir DIR]   copy this binary to DIR/ferry atomically (default {DEFAULT_DIR})\n  \
         ferry --version                 print the version\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The text of `ferry --version`: the same first line as the other Ferry
/// binaries (`<name> <version>`), then the CNI spec versions spoken.
pub fn version_text() -> String {
    format!("ferry {}\nCNI versions: {}\n", env!("CARGO_PKG_VERSION"), crate::result::SUPPORTED_VERSIONS.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_only_taken_for_the_known_requests() {
        let p = |a: &[&str]| parse_args(a);
        // One row per case.
        assert_eq!(p(&[]), Ok(Invocation::Cni)); // what the kubelet does
        assert_eq!(p(&["ADD"]), Ok(Invocation::Cni)); // unknown words stay CNI
        assert_eq!(p(&["--version"]), Ok(Invocation::Version));
        assert_eq!(p(&["-V"]), Ok(Invocation::Version));
        assert_eq!(p(&["version"]), Ok(Invocation::Version));
        assert_eq!(p(&["--help"]), Ok(Invocation::Help));
        assert_eq!(p(&["install-cni"]), Ok(Invocation::InstallCni { dir: DEFAULT_DIR.into() }));
        assert_eq!(p(&["install-cni", "--dir", "/x"]), Ok(Invocation::InstallCni { dir: "/x".into() }));
        assert_eq!(p(&["install-cni", "--dir=/y"]), Ok(Invocation::InstallCni { dir: "/y".into() }));
        assert!(p(&["install-cni", "--dir"]).is_err()); // no value
        assert!(p(&["install-cni", "--dir="]).is_err()); // empty value
        assert!(p(&["install-cni", "/x"]).is_err()); // positional
        assert!(p(&["--version", "x"]).is_err()); // trailing junk
    }

    #[test]
    fn installs_then_leaves_an_identical_binary_alone_then_replaces_a_different_one() {
        let s = tempfile::tempdir().unwrap();
        let src = s.path().join("src");
        fs::write(&src, b"new binary").unwrap();
        let dir = s.path().join("bin/nested");
        let (dest, o) = install(&src, &dir).unwrap();
        assert_eq!((dest.clone(), o), (dir.join("ferry"), Outcome::Installed));
        assert_eq!(fs::read(&dest).unwrap(), b"new binary");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(install(&src, &dir).unwrap().1, Outcome::Unchanged);
        // Same bytes, wrong mode: rewritten.
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(install(&src, &dir).unwrap().1, Outcome::Replaced);
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o755);
        // Same length, other bytes.
        fs::write(&src, b"New binary").unwrap();
        assert_eq!(install(&src, &dir).unwrap().1, Outcome::Replaced);
        assert_eq!(fs::read(&dest).unwrap(), b"New binary");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ferry"], "no temporaries left");
    }

    #[test]
    fn a_missing_source_fails_and_leaves_nothing() {
        let s = tempfile::tempdir().unwrap();
        let e = install(&s.path().join("absent"), s.path()).unwrap_err();
        assert_eq!(e.op, "opening");
        assert!(e.to_string().contains("absent"), "{e}");
        assert_eq!(fs::read_dir(s.path()).unwrap().count(), 0);
    }
}
