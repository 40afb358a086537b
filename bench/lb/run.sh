#!/bin/bash
# make bench-lb: Ferry's eBPF service load balancer beside kube-proxy's
# iptables / nftables data planes and direct pod-IP access, on the shared
# kube-proxy harness topology (vendored in kubeproxy/, see README.md), plus
# the Ferry-only figures (cold programming of 10,000 Services x 10
# endpoints, endpoint-change latency, agent RSS, map memory, iperf direct vs
# VIP), and the socket LB for host-network clients (socklb.py). Writes
# bench/results/lb.json and socklb.json and prints a summary.
#
#   bash bench/lb/run.sh            # N = 1, 1000, 10000; ~25 min on 2 vCPUs
#   bash bench/lb/run.sh --quick    # N = 1, 1000; 1 rep; a few minutes
#
# Runs as root; everything happens in namespaces the harness and extra.py
# create (kpb-*, ferry-lbx-*), never in the root namespace.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/bench/results"
mkdir -p "$OUT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
export FERRY_BIN="${FERRY_BIN:-$ROOT/target/release}"
for b in ferry-agent ferryctl; do
  [ -x "$FERRY_BIN/$b" ] || { echo "missing $FERRY_BIN/$b: run make build" >&2; exit 1; }
done
command -v iptables-legacy-restore >/dev/null && command -v nft >/dev/null && command -v iperf3 >/dev/null \
  && command -v gcc >/dev/null && command -v conntrack >/dev/null && command -v bpftool >/dev/null \
  || { echo "needs iptables, nftables, iperf3, gcc, conntrack, bpftool (make bootstrap-bench)" >&2; exit 1; }

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN="$OUT/lb-$STAMP"
mkdir -p "$RUN"
export FERRY_LB_TIMINGS="$RUN/hook-timings.jsonl"
if [ $QUICK = 1 ]; then
  NS="1,1000"; REPS=1; EXTRA_ARGS=(--lat-count 500 --lat-seconds 2 --rate-seconds 2); PT=60
else
  NS="1,1000,10000"; REPS=3; EXTRA_ARGS=(); PT=60
fi
# iptables (nf_tables back end) takes minutes to load 10,000 Services (see
# kubeproxy/README.md): it is bounded by --program-timeout ${PT}s and shows up
# as a timeout at N=10000; iptables-legacy gives that row.
python3 "$HERE/kubeproxy/bench.py" \
  --dataplane none,external,nftables,iptables,iptables-legacy \
  --dp-cmd "python3 $HERE/hook.py" \
  --n "$NS" --reps "$REPS" --iperf --iperf-seconds 2 --program-timeout "$PT" \
  --out "$RUN" "${EXTRA_ARGS[@]}" 2>&1 | tee "$RUN/harness.log"
python3 "$HERE/extra.py" "$RUN/extra.json" $([ $QUICK = 1 ] && echo --quick) 2>&1 | tee "$RUN/extra.log"
python3 "$HERE/report.py" "$RUN" "$OUT/lb.json"
# The socket LB: a host-network client through a ClusterIP vs straight to
# the pod (issue 11's goal: >= 0.98x). Its own JSON beside lb.json.
python3 "$HERE/socklb.py" "$OUT/socklb.json" $([ $QUICK = 1 ] && echo --quick) 2>&1 | tee "$RUN/socklb.log" || true
