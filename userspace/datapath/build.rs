//! Builds `ebpf/programs` for the BPF target with aya-build and leaves the
//! ELF in OUT_DIR, from where lib.rs embeds it.
use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let programs = manifest.join("../../ebpf/programs").canonicalize()?;
    let common = manifest.join("../../ebpf/common").canonicalize()?;
    println!("cargo:rerun-if-changed={}", common.display());

    // bpf-linker is installed by `cargo install` into ~/.cargo/bin, which is
    // not on PATH when cargo itself was started by its full path (CI, sudo).
    if let Some(home) = env::var_os("HOME") {
        let bin = PathBuf::from(home).join(".cargo/bin");
        let mut paths = vec![bin];
        paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        env::set_var("PATH", env::join_paths(paths)?);
    }
    // aya-build runs `cargo build --package ferry-ebpf` in the current
    // directory; ferry-ebpf is its own workspace (it only builds for the BPF
    // target), so run it from there. RUSTUP_TOOLCHAIN from the outer (stable)
    // cargo would override `rustup run nightly`.
    env::set_current_dir(&programs)?;
    env::remove_var("RUSTUP_TOOLCHAIN");
    let root_dir = programs.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {programs:?}"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "ferry-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
}
