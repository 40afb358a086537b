#!/bin/bash
# make bench-net (issue 13): pod-to-pod across nodes (Ferry's host-gw and
# VXLAN beside kernel routes and a kernel VXLAN device built by hand, as
# Flannel programs them), egress to the outside (Ferry's eBPF masquerade
# beside an nftables masquerade rule) and a ClusterIP with only remote
# backends (beside direct pod IPs), on the e2e tests' three-node topology.
# Prints the table and writes bench/results/net.json. See README.md.
#
#   bash bench/net/run.sh              # 7 rounds of 3 s: ~6 min on 2 vCPUs
#   bash bench/net/run.sh --quick      # 2 rounds of 2 s
#   bash bench/net/run.sh --rounds 7 --seconds 4
#
# Runs as root; everything happens in namespaces net.py creates
# (ferry-net-<pid>{f,h}-*), never in the root namespace, and is removed on
# exit, SIGTERM or Ctrl-C included.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export FERRY_BIN="${FERRY_BIN:-$ROOT/target/release}"
for b in ferry-agent ferry; do
  [ -x "$FERRY_BIN/$b" ] || { echo "missing $FERRY_BIN/$b: run make build" >&2; exit 1; }
done
for t in ip bridge nft iperf3 gcc; do
  command -v "$t" >/dev/null || { echo "bench-net needs $t (make bootstrap-bench)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-net needs root (network namespaces, bpffs)" >&2; exit 1; }
mkdir -p "$ROOT/bench/results"
# exec: a SIGTERM to this script reaches net.py, which cleans up.
exec python3 "$HERE/net.py" "$ROOT/bench/results/net.json" "$@"
