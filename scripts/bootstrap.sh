#!/usr/bin/env bash
# Installs what `make demo`, `make test` and the benchmarks need on a fresh
# Debian bookworm machine that has only the Rust toolchain. Idempotent: every
# step checks first and skips what is present.
#   scripts/bootstrap.sh            build + test prerequisites (podman for the
#                                   image, a Python venv with the manifest checkers)
#   scripts/bootstrap.sh bench      also the baselines' packages
set -euo pipefail

want_bench=${1:-}
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# podman builds the image (make image, tests/e2e/image.rs) and runs it; runc
# for hosts with hybrid cgroups, which crun refuses. python3-venv: the
# manifest checkers' venv (below). iputils-ping: the demo's and the egress
# tests' pings from a pod.
pkgs=(iproute2 iptables nftables containernetworking-plugins iperf3 dnsutils knot
      llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev gcc make python3 procps
      bpftool jq podman runc python3-venv iputils-ping)
if [ "$want_bench" = bench ]; then
  pkgs+=(knot-dnsutils nsd unbound dnsperf conntrack)
fi
for p in "${pkgs[@]}"; do have_pkg "$p" || need_pkgs+=("$p"); done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# knot is a test upstream and a benchmark baseline only (nsd too): never leave the system services running.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now unbound knot nsd >/dev/null 2>&1 || true; fi

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain nightly
fi
if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  echo "bootstrap: building bpf-linker against LLVM 22 (a few minutes, once)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker \
    --no-default-features --features llvm-22 >/dev/null 2>&1 \
  || LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22
fi

# The manifest checkers (userspace/state/tests/manifests.rs): Kubernetes
# OpenAPI schemas 1.25-1.37 (kubernetes-validate) and checkov, pinned, in a
# venv of their own (checkov alone pulls ~400 MB of dependencies).
venv=${FERRY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/venv}
py_pins="kubernetes-validate==1.37.0 checkov==3.3.30"
if [ "$(cat "$venv/.ferry-pins" 2>/dev/null)" != "$py_pins" ]; then
  echo "bootstrap: installing $py_pins into $venv (a few minutes, once)"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # the pins are words
  "$venv/bin/pip" install -q --disable-pip-version-check $py_pins
  echo "$py_pins" > "$venv/.ferry-pins"
fi

# bpffs, for the pinned maps and programs.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi
echo "bootstrap: ok"
