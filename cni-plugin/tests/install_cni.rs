//! `ferry install-cni` and `ferry --version` as the DaemonSet's init
//! container and an operator run them: the real binary, a scratch directory,
//! a time limit on every run. And the CNI protocol is untouched by them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `ferry` with `args` (and `env`), stdin empty, killed after LIMIT.
fn ferry(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("-s").arg("KILL").arg(LIMIT.as_secs().to_string()).arg(FERRY).args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ferry under timeout")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn install_into(dir: &Path) -> Output {
    ferry(&["install-cni", "--dir", dir.to_str().unwrap()], &[])
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn install_cni_installs_is_a_no_op_when_identical_and_replaces_atomically() {
    let s = tempfile::tempdir().unwrap();
    let dir = s.path().join("opt/cni/bin");
    let dest = dir.join("ferry");
    let me = fs::read(FERRY).unwrap();

    // First run: the directory is created and the binary installed, 0755.
    let o = install_into(&dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("installed") && stdout(&o).contains(dest.to_str().unwrap()), "{}", stdout(&o));
    assert_eq!(fs::read(&dest).unwrap(), me, "the installed file is this binary");
    assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(entries(&dir), ["ferry"], "no temporary left");
    // It runs from there.
    let v = Command::new(&dest).arg("--version").output().unwrap();
    assert!(stdout(&v).starts_with(&format!("ferry {}\n", env!("CARGO_PKG_VERSION"))), "{}", stdout(&v));

    // Second run: the same bytes, so nothing is written (same inode, same mtime).
    let before = fs::metadata(&dest).unwrap();
    let o = install_into(&dir);
    assert!(o.status.success() && stdout(&o).contains("unchanged"), "{}", stdout(&o));
    let after = fs::metadata(&dest).unwrap();
    assert_eq!((before.ino(), before.mtime_nsec(), before.mtime()), (after.ino(), after.mtime_nsec(), after.mtime()));

    // A different file there: replaced by a rename, not written in place — a
    // second name for the old inode (as a runtime executing it holds) still
    // reads the old bytes.
    fs::remove_file(&dest).unwrap();
    fs::write(&dest, b"#!/bin/sh\necho an older ferry\n").unwrap();
    let old = s.path().join("old-ferry");
    fs::hard_link(&dest, &old).unwrap();
    let o = install_into(&dir);
    assert!(o.status.success() && stdout(&o).contains("replaced"), "{}", stdout(&o));
    assert_eq!(fs::read(&dest).unwrap(), me);
    assert_eq!(fs::read(&old).unwrap(), b"#!/bin/sh\necho an older ferry\n", "old inode untouched");
    assert_ne!(fs::metadata(&dest).unwrap().ino(), fs::metadata(&old).unwrap().ino());
    assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(entries(&dir), ["ferry"]);
}

#[test]
fn install_cni_fails_clearly() {
    let s = tempfile::tempdir().unwrap();
    // DIR is a regular file.
    let file = s.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let o = install_into(&file);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("ferry install-cni:") && err.contains("not-a-dir"), "{err}");
    assert!(o.stdout.is_empty());
    // Bad usage: exit 2 with the usage text.
    let o = ferry(&["install-cni", "--dri", "/x"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--dri") && err.contains("install-cni [--dir DIR]"), "{err}");
}

#[test]
fn version_and_help_and_the_cni_protocol_side_by_side() {
    for flag in ["--version", "-V", "version"] {
        let o = ferry(&[flag], &[]);
        assert!(o.status.success());
        assert!(stdout(&o).starts_with(&format!("ferry {}\n", env!("CARGO_PKG_VERSION"))), "{flag}: {}", stdout(&o));
    }
    let o = ferry(&["--help"], &[]);
    assert!(o.status.success() && stdout(&o).contains("install-cni"), "{}", stdout(&o));
    // As a runtime calls it: no argv, CNI_COMMAND=VERSION, the spec's JSON.
    let o = ferry(&[], &[("CNI_COMMAND", "VERSION")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("VERSION prints JSON");
    assert!(v["supportedVersions"].as_array().is_some_and(|a| a.iter().any(|x| x == "1.1.0")), "{v}");
    // Any other argv is ignored as before: still the CNI protocol (here its
    // error for a missing CNI_COMMAND), not a usage message.
    let o = ferry(&["something-else"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a CNI error object");
    assert_eq!(v["code"], 4, "{v}");
}
