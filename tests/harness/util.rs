//! Small pieces the rest of the harness is built from: unique names, external
//! commands with a timeout, named network namespaces, entering a namespace on
//! a fresh thread.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_netlink::Netns;

/// Every name the harness makes starts with this, then the test process id,
/// so concurrent test runs never collide and leftovers of a killed run can be
/// recognised (and removed) by a later one.
pub const PREFIX: &str = "fyt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique in this machine for the life of this process:
/// `fyt<pid><tag><n>`.
pub fn unique(tag: &str) -> String {
    format!("{PREFIX}{}{tag}{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command with a time limit (coreutils `timeout` sends SIGKILL), and
/// returns its output. Panics if it cannot start.
///
/// It re-creates `cmd` around `timeout`, so only program, arguments and
/// environment carry over: a `pre_exec` hook ([`in_netns`], joining a
/// cgroup) would be silently lost and the command would run in the test's
/// own namespace. Such commands are built on [`timeout_command`] instead.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let prog = cmd.get_program().to_os_string();
    let mut wrapped = Command::new("timeout");
    wrapped.arg("-s").arg("KILL").arg(format!("{}", limit.as_secs().max(1))).arg(&prog).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {prog:?}: {e}"))
}

/// `timeout -s KILL <limit> <program>`: a command bounded in time that
/// `pre_exec` hooks (namespace, cgroup) can be added to, as they apply to
/// `timeout` and are inherited by the program it runs.
pub fn timeout_command(limit: Duration, program: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("-s").arg("KILL").arg(format!("{}", limit.as_secs().max(1))).arg(program).stdin(Stdio::null());
    cmd
}

/// Runs `args` (e.g. `["ip", "-n", ns, "link"]`), panicking with its stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = run_timeout(Command::new(args[0]).args(&args[1..]), Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`] but failures are returned, not panicked on.
pub fn sh_ok(args: &[&str]) -> Result<String, String> {
    let out = run_timeout(Command::new(args[0]).args(&args[1..]), Duration::from_secs(20));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A network namespace bind-mounted at /run/netns/<name> (as `ip netns add`
/// does), deleted on Drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
    deleted: bool,
}

impl NamedNetns {
    pub fn create(name: &str) -> Self {
        sh(&["ip", "netns", "add", name]);
        let ns = Self { name: name.to_string(), path: Path::new("/run/netns").join(name), deleted: false };
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes it now (e.g. to test DEL with the namespace already gone).
    pub fn delete(&mut self) {
        if !self.deleted {
            let _ = sh_ok(&["ip", "netns", "del", &self.name]);
            self.deleted = true;
        }
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its
    /// result; a panic inside `f` is re-raised here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.path, f)
    }

    /// Makes `cmd` start inside this namespace (setns between fork and exec).
    pub fn command(&self, cmd: &mut Command) {
        in_netns(cmd, &self.path)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs `f` on a fresh thread that has entered the namespace at `path`.
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_path_buf();
    let h = std::thread::spawn(move || {
        let ns = Netns::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let _g = ns.enter().unwrap_or_else(|e| panic!("{e}"));
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Makes `cmd` enter the namespace at `path` between fork and exec.
pub fn in_netns(cmd: &mut Command, path: &Path) {
    let ns = Netns::open(path).unwrap_or_else(|e| panic!("{e}"));
    // The fd must stay open until the child has forked: the closure owns it.
    // SAFETY: the closure only calls setns(2), which is async-signal-safe,
    // on an fd it owns; nothing allocates or locks between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Only async-signal-safe calls here (we are between fork and exec).
            if libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("sysctl {key}={value}: {e}"));
}

/// Removes what test processes that died without cleaning up (SIGKILL, OOM)
/// left behind: namespaces and scratch dirs named `fyt<pid>...` whose pid is
/// gone. Runs once per process.
pub fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix(PREFIX) else { return false };
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            match digits.parse::<u32>() {
                Ok(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
                Err(_) => false,
            }
        };
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if dead(&n) {
                    let _ = sh_ok(&["ip", "netns", "del", &n]);
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if dead(&n) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
}
