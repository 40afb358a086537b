#!/usr/bin/env bash
# Builds the Ferry image offline (`make image`): static binaries of ferry,
# ferry-agent, ferry-dns and ferryctl, FROM scratch, each at /usr/bin/.
#   image/build.sh                          -> ghcr.io/ferry-project/ferry:<workspace version>
#   IMAGE=registry.example/ferry:dev image/build.sh
#   PODMAN="podman --storage-driver vfs" image/build.sh   (no overlayfs)
#
# Static linking: glibc's crt-static for the host triple, in its own target
# dir (target/static), so the normal build is untouched. The flags are given
# for that triple only (CARGO_TARGET_<TRIPLE>_RUSTFLAGS with an explicit
# --target): build scripts, proc macros and the eBPF object that
# userspace/datapath's build.rs builds with aya-build (bpfel-unknown-none)
# do not get them. Debug info is stripped (symbols stay, for backtraces):
# with it the four binaries are ~250 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "image: no version in Cargo.toml [workspace.package]" >&2; exit 1; }
image=${IMAGE:-ghcr.io/ferry-project/ferry:$version}
podman=${PODMAN:-podman}
target=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${FERRY_STATIC_TARGET_DIR:-target/static}
bins=(ferry ferry-agent ferry-dns ferryctl)
command -v "${podman%% *}" >/dev/null || { echo "image: ${podman%% *} not found (scripts/bootstrap.sh installs podman)" >&2; exit 1; }

triple_var=CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS
export "$triple_var=-C target-feature=+crt-static -C strip=debuginfo"
echo "image: static build for $target in $target_dir ($triple_var)"
start=$(date +%s)
cargo build --release --locked --target "$target" --target-dir "$target_dir" \
  -p ferry-cni -p ferry-agent -p ferry-dns -p ferryctl --bins
echo "image: binaries built in $(( $(date +%s) - start )) s"

out=$target_dir/$target/release
ctx=$target_dir/image-context
rm -rf "$ctx" && mkdir -p "$ctx"
for b in "${bins[@]}"; do
  # Static means no program interpreter (ld.so) in the program headers.
  if readelf -lW "$out/$b" | grep -q 'Requesting program interpreter'; then
    echo "image: $out/$b is dynamically linked" >&2
    exit 1
  fi
  cp "$out/$b" "$ctx/$b"
done
if command -v file >/dev/null; then (cd "$ctx" && file "${bins[@]}"); fi

# Reproducible: file times and the image's creation time are the last
# commit's, so the same binaries give the same image ID.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
start=$(date +%s)
$podman build --pull=never --network none --timestamp "$epoch" \
  --label org.opencontainers.image.title=ferry \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.source=https://github.com/ferry-project/ferry \
  -f image/Containerfile -t "$image" "$ctx"
# The image this tag named before, if the binaries changed: ours only.
$podman image prune -f --filter label=org.opencontainers.image.title=ferry >/dev/null
echo "image: $image built in $(( $(date +%s) - start )) s"
