//! The image the manifests run (image/build.sh, `make image`): static
//! binaries FROM scratch, each at /usr/bin/, nothing else in it. The image
//! is built once per test process (the static build is reused when it is up
//! to date) and run with podman, without a network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use ferry_tests::harness::util;

const BINARIES: [&str; 4] = ["ferry", "ferry-agent", "ferry-dns", "ferryctl"];
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// A cold static build of the four binaries is ~13 min on 2 cores.
const BUILD_LIMIT: Duration = Duration::from_secs(45 * 60);
const PODMAN_LIMIT: Duration = Duration::from_secs(60);

/// The tag `make image` gives and the manifests name.
fn tag() -> String {
    format!("ghcr.io/ferry-project/ferry:{VERSION}")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Builds the image once (niced: other tests run beside it) and returns its
/// tag; every test of this module fails with the build's output if it fails.
fn image() -> String {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cmd = Command::new("nice");
            cmd.args(["-n", "10", "bash"]).arg(repo_root().join("image/build.sh")).env("IMAGE", tag());
            let out = util::run_timeout(&mut cmd, BUILD_LIMIT);
            if out.status.success() {
                Ok(tag())
            } else {
                let t = text(&out);
                let tail: Vec<&str> = t.lines().rev().take(40).collect();
                Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("image/build.sh failed:\n{e}"))
}

/// Whether /sys/fs/cgroup is the unified cgroup v2 hierarchy.
fn cgroup2_unified() -> bool {
    let path = std::ffi::CString::new("/sys/fs/cgroup").unwrap();
    // SAFETY: statfs(2) writes into the zeroed struct we own, from a valid C string.
    let (rc, fs) = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        (libc::statfs(path.as_ptr(), &mut fs), fs)
    };
    rc == 0 && fs.f_type == 0x6367_7270 // CGROUP2_SUPER_MAGIC
}

/// podman, adapted to two host facts that have nothing to do with the
/// image: Debian's default runtime (crun 1.8) refuses hosts with hybrid
/// cgroups v1/v2, which runc handles; and rootful podman raises a
/// container's RLIMIT_NOFILE/NPROC to 1048576/4194304, which fails without
/// CAP_SYS_RESOURCE (CI sandboxes), so `run` asks for lower limits, which
/// are always allowed.
fn podman(args: &[&str]) -> Output {
    let mut cmd = Command::new("podman");
    if !cgroup2_unified() {
        cmd.args(["--runtime", "runc"]);
    }
    util::run_timeout(cmd.args(args), PODMAN_LIMIT)
}

/// `podman run --rm --network none <image> <args>`, with extra podman flags.
fn run_in_image(flags: &[&str], args: &[&str]) -> Output {
    let img = image();
    let mut all = vec!["run", "--rm", "--network", "none", "--pull", "never"];
    all.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]);
    all.extend(flags);
    all.push(&img);
    all.extend(args);
    podman(&all)
}

#[test]
fn every_binary_runs_in_the_image_and_reports_the_workspace_version() {
    let mut wrong = Vec::new();
    for bin in BINARIES {
        let path = format!("/usr/bin/{bin}");
        let out = run_in_image(&[], &[&path, "--version"]);
        let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
        if !out.status.success() || first != format!("{bin} {VERSION}") {
            wrong.push(format!("{path} --version: {}", text(&out).trim()));
        }
    }
    assert!(wrong.is_empty(), "expected `<name> {VERSION}` from each:\n{}", wrong.join("\n"));
}

/// The image's root filesystem, mounted for a look; unmounted on drop.
struct MountedImage {
    image: String,
    root: PathBuf,
}

impl MountedImage {
    fn new(image: &str) -> Self {
        let out = podman(&["image", "mount", image]);
        assert!(out.status.success(), "podman image mount: {}", text(&out));
        let m = MountedImage { image: image.to_string(), root: String::from_utf8_lossy(&out.stdout).trim().into() };
        assert!(m.root.is_dir(), "mount point {:?}", m.root);
        m
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = podman(&["image", "unmount", &self.image]);
    }
}

/// Every path under `root`, relative, directories with a trailing `/`.
fn walk(root: &Path, dir: &Path, into: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            into.insert(format!("{rel}/"));
            walk(root, &p, into);
        } else {
            into.insert(rel);
        }
    }
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header (a
/// dynamic loader to run it with): a static binary has none.
fn has_interpreter(elf: &[u8]) -> bool {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1, "not an ELF64 LE file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn the_image_holds_only_the_static_binaries() {
    let img = image();
    let mounted = MountedImage::new(&img);
    let root = mounted.root.clone();
    let mut files = BTreeSet::new();
    walk(&root, &root, &mut files);
    let mut want: BTreeSet<String> = ["usr/", "usr/bin/"].iter().map(|s| s.to_string()).collect();
    want.extend(BINARIES.iter().map(|b| format!("usr/bin/{b}")));
    assert_eq!(files, want, "the image's files");
    for b in BINARIES {
        let elf = std::fs::read(root.join("usr/bin").join(b)).unwrap();
        assert!(!has_interpreter(&elf), "{b} is dynamically linked");
    }
    drop(mounted);
    // No shell to run: podman cannot even start one.
    let out = run_in_image(&[], &["/bin/sh", "-c", "true"]);
    assert!(!out.status.success(), "/bin/sh ran: {}", text(&out));
}

/// As 30-dns.yaml runs it: uid 65532, no capability, read-only root, and
/// net.ipv4.ip_unprivileged_port_start=53 in its network namespace, it
/// binds port 53; without the sysctl it cannot (so the sysctl, not some
/// capability, is what makes it work).
#[test]
fn ferry_dns_binds_port_53_unprivileged_with_the_manifests_sysctl() {
    let dir = std::env::temp_dir().join(util::unique("img"));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = dir.join("catalog.yaml");
    std::fs::write(&fixture, "").unwrap();
    let volume = format!("{}:/catalog.yaml:ro", fixture.display());
    let base = [
        "--user",
        "65532:65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--read-only-tmpfs=false",
        "-v",
        &volume,
    ];
    let dns = ["/usr/bin/ferry-dns", "--listen=0.0.0.0:53", "--fixture=/catalog.yaml", "--upstream=127.0.0.1:5353"];

    // Runs until podman's --timeout stops it: serving all along.
    let mut flags = base.to_vec();
    flags.extend(["--sysctl", "net.ipv4.ip_unprivileged_port_start=53", "--timeout", "3"]);
    let out = run_in_image(&flags, &dns);
    assert!(text(&out).contains("listening on 0.0.0.0:53"), "{}", text(&out));

    let out = run_in_image(&[&base[..], &["--timeout", "10"]].concat(), &dns);
    let t = text(&out);
    assert!(!out.status.success() && !t.contains("listening on"), "bound 53 without the sysctl: {t}");
    assert!(t.contains("ermission denied"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}
