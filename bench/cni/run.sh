#!/usr/bin/env bash
# CNI latency and leak benchmark: ferry and Debian's reference bridge +
# host-local, same topology, same run. Every side effect stays inside network
# namespaces the harness creates (see cni_harness.py).
#
#   bash bench/cni/run.sh            # 200 pods, 8 in parallel
#   PODS=50 bash bench/cni/run.sh    # quicker
#
# Prints p50/p99 ADD and DEL per phase for each, the ferry/reference ratios
# and leaks; writes everything to bench/results/cni.json. Ferry runs twice:
# with its built-in IPAM, and delegating to the same host-local binary the
# reference uses (the path that also asks the delegate's VERSION).
set -euo pipefail
cd "$(dirname "$0")/../.."
PODS=${PODS:-200}
CONC=${CONC:-8}
FERRY_DIR=${FERRY_BIN_DIR:-target/release}
REF_DIR=${REF_CNI_DIR:-/usr/lib/cni}
[ -x "$FERRY_DIR/ferry" ] || { echo "no $FERRY_DIR/ferry: run 'make build' first" >&2; exit 2; }
[ -x "$REF_DIR/bridge" ] || { echo "no $REF_DIR/bridge: apt-get install containernetworking-plugins" >&2; exit 2; }
mkdir -p bench/results
tmp=$(mktemp -d /tmp/ferry-bench-cni.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

echo "== reference: bridge + host-local ($REF_DIR)"
python3 bench/cni/cni_bench.py "$REF_DIR" bridge --pods "$PODS" --concurrency "$CONC" --json "$tmp/ref.json" || true
echo "== ferry ($FERRY_DIR, built-in IPAM)"
# pinDir: a path with nothing pinned, so the run never attaches whatever data
# path this machine may have loaded under /sys/fs/bpf/ferry (the reference
# has no data path either).
python3 bench/cni/cni_bench.py "$FERRY_DIR" ferry '{"ipam": {"type": "ferry"}, "pinDir": "/run/ferry-bench-no-datapath"}' \
    --pods "$PODS" --concurrency "$CONC" --json "$tmp/ferry.json" || true

echo "== ferry ($FERRY_DIR, IPAM delegated to $REF_DIR/host-local, at its own CNI version)"
# The reference's own config (host-local), as a user switching from bridge
# would write it; ferry speaks 1.1.0 to the runtime and 1.0.0 to host-local.
python3 bench/cni/cni_bench.py "$FERRY_DIR" ferry '{"pinDir": "/run/ferry-bench-no-datapath"}' \
    --pods "$PODS" --concurrency "$CONC" --json "$tmp/ferry-hl.json" || true

python3 bench/cni/report.py "$tmp/ferry.json" "$tmp/ref.json" bench/results/cni.json "$tmp/ferry-hl.json"
